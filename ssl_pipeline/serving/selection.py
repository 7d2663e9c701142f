"""`ssl-pipeline select`: which unlabeled images to label next, from the champion's embeddings.

The pool is the prepared unlabeled split minus the images already labeled (same pixels as a train
image), or a folder. Strategies (ssl_core.embeddings.select): kcenter (default; the labeled train images
count as already-covered centers), random, uncertainty (the champion classifier's smallest margins).
--by-cluster splits the budget evenly over k-means clusters of the embeddings. Writes a CSV of the chosen
paths (rank, path, cluster, margin) and a contact sheet of them.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ssl_core.data.images import decode_images
from ssl_core.embeddings import select as strategies
from ssl_core.embeddings.files import embed_tensor
from ssl_pipeline.serving.embeddings import BadInput, Source, iter_embeddings

SHEET_TILES = 100   # the contact sheet shows the first this many picks


@dataclass
class Pool:
    paths: list[str]
    vectors: torch.Tensor          # [N, D]
    images: torch.Tensor | None    # uint8 [N, C, S, S] for prepared pools (thumbnails, uncertainty); None for folders
    source: Source


def already_labeled(prepared_dir: Path) -> set[str]:
    """Content hashes of the labeled train images (prepare's manifest), so they are never proposed again."""
    import pandas as pd

    path = Path(prepared_dir) / "manifest.csv"
    if not path.exists():
        return set()
    frame = pd.read_csv(path, usecols=["split", "content_sha1"])
    return set(frame.loc[frame["split"].isin(["train", "val", "test"]), "content_sha1"])


def load_pool(encoder, spec, source: Source, progress=None) -> Pool:
    """Embed the pool (for a prepared unlabeled split: without the images already labeled)."""
    paths, chunks = [], []
    for p, _, vectors, _ in iter_embeddings(encoder, spec, source, progress):
        paths += p
        chunks.append(vectors)
    vectors = torch.cat(chunks) if chunks else torch.zeros(0, 1)
    images = None
    if source.prepared_dir is not None:
        import pandas as pd

        from ssl_core.data.cache import load_split

        images = load_split(source.prepared_dir, source.split).images
        frame = pd.read_csv(source.prepared_dir / "manifest.csv", usecols=["split", "content_sha1"])
        hashes = frame.loc[frame["split"] == source.split, "content_sha1"].tolist()
        if len(hashes) == len(paths):
            labeled = already_labeled(source.prepared_dir)
            keep = torch.tensor([h not in labeled for h in hashes])
            idx = keep.nonzero().flatten()
            paths, vectors, images = [paths[i] for i in idx.tolist()], vectors[idx], images[idx]
    return Pool(paths, vectors, images, source)


def choose(pool: Pool, budget: int, strategy: str, seed: int = 0, labeled: torch.Tensor | None = None,
           margins: torch.Tensor | None = None, clusters: torch.Tensor | None = None) -> list[int]:
    """Indices into the pool, in the order picked."""
    if budget < 1:
        raise BadInput(f"--budget must be at least 1, got {budget}")
    if budget > len(pool.paths):
        raise BadInput(f"--budget {budget} is larger than the pool of {len(pool.paths)} unlabeled image(s) "
                       f"({pool.source.description}); ask for at most {len(pool.paths)}")

    def pick(idx: torch.Tensor, quota: int) -> list[int]:
        if strategy == "kcenter":
            return strategies.kcenter_greedy(pool.vectors[idx], quota, labeled=labeled, seed=seed)
        if strategy == "uncertainty":
            return strategies.least_margin(margins[idx], quota)
        return strategies.random_choice(len(idx), quota, seed)

    everything = torch.arange(len(pool.paths))
    if clusters is None:
        return everything[pick(everything, budget)].tolist()
    return strategies.balanced_by_cluster(clusters, budget, pick)


def classifier_margins(predictor, pool: Pool, batch: int = 256) -> torch.Tensor:
    """The champion classifier's top-1 minus top-2 probability for every pool image."""
    if pool.images is None:
        items = [(Path(p), -1) for p in pool.paths]
        out = []
        for start in range(0, len(items), batch):
            decoded = decode_images(items[start:start + batch], Path("/"), predictor.image_size, predictor.channels)
            out.append(torch.softmax(predictor.logits(torch.from_numpy(decoded.images).float() / 255).float(), 1))
        probs = torch.cat(out)
    else:
        probs = torch.cat([torch.softmax(predictor.logits(pool.images[i:i + batch].float() / 255).float(), 1)
                           for i in range(0, len(pool.images), batch)])
    if len(probs) != len(pool.paths):
        raise BadInput("some pool images could not be decoded for the classifier; remove them and run again")
    return strategies.margins(probs)


def thumbnails(pool: Pool, chosen: list[int], size: int = 48) -> list[Image.Image]:
    picks = chosen[:SHEET_TILES]
    if pool.images is not None:
        arrays = [pool.images[i].numpy() for i in picks]
    else:
        decoded = decode_images([(Path(pool.paths[i]), -1) for i in picks], Path("/"), size, 3)
        arrays = list(decoded.images)
    out = []
    for a in arrays:
        a = a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)
        out.append(Image.fromarray(np.ascontiguousarray(a)).convert("RGB").resize((size, size), Image.NEAREST))
    return out


def contact_sheet(tiles: list[Image.Image], out: Path, columns: int = 10, gap: int = 2) -> None:
    """The chosen images in pick order, left to right, top to bottom."""
    if not tiles:
        return
    size = tiles[0].size[0]
    rows = -(-len(tiles) // columns)
    cols = min(columns, len(tiles))
    sheet = Image.new("RGB", (cols * (size + gap) + gap, rows * (size + gap) + gap), (255, 255, 255))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (gap + (i % columns) * (size + gap), gap + (i // columns) * (size + gap)))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)


def write_selection(pool: Pool, chosen: list[int], out: Path, margins: torch.Tensor | None,
                    clusters: torch.Tensor | None) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["rank", "path", "cluster", "margin"])
        for rank, i in enumerate(chosen, 1):
            writer.writerow([rank, pool.paths[i], "" if clusters is None else int(clusters[i]),
                             "" if margins is None else f"{float(margins[i]):.4f}"])


def labeled_vectors(encoder, spec, prepared_dir: Path) -> torch.Tensor | None:
    """Embeddings of the labeled train split: k-center treats them as already covered."""
    from ssl_core.data.cache import load_split

    try:
        train = load_split(prepared_dir, "train")
    except FileNotFoundError:   # not prepared yet: nothing is labeled
        return None
    if train.images.shape[1] != spec.in_channels:
        return None
    return torch.cat(list(embed_tensor(encoder, train.images))) if len(train) else None
