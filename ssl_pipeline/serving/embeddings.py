"""Embeddings people can use: an encoder's vectors for a folder or a prepared split, streamed to Parquet.

One row per image: path, split, label (class name, empty when unknown) and the vector (float32, a
fixed-size list). The file's schema metadata names the encoder it came from (`ssl_pipeline.model`,
`ssl_pipeline.encoder_spec`), so `similar` embeds a query with the same encoder. Rows are written a
chunk at a time (one Parquet row group per chunk), so memory holds one chunk whatever the number of
images.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ssl_core.data.cache import SPLITS, load_split
from ssl_core.data.listing import Rejected, list_labeled, list_unlabeled
from ssl_core.embeddings.files import embed_files, embed_tensor
from ssl_core.models.spec import EncoderSpec

Progress = Callable[[int, int], None]
FOLDER_SPLIT = "folder"


class BadInput(ValueError):
    """An input the command cannot use; the message says which and what would work."""


@dataclass
class Source:
    """What to embed: image files (a folder) or a prepared split (uint8 cache + manifest)."""
    description: str
    files: list[tuple[Path, int]] = field(default_factory=list)   # (path, class index or -1)
    root: Path = Path(".")
    classes: list[str] = field(default_factory=list)
    split: str = FOLDER_SPLIT
    prepared_dir: Path | None = None
    rejected: list[Rejected] = field(default_factory=list)

    def __len__(self) -> int:
        if self.prepared_dir is not None:
            return len(load_split(self.prepared_dir, self.split))
        return len(self.files)


def folder_source(folder: Path, labeled: bool = False) -> Source:
    """Every image under `folder` (recursive); labeled: one subfolder per class gives each file its label."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInput(f"no such folder: {folder}")
    if labeled:
        pairs, classes, rejected = list_labeled(folder)
        index = {c: i for i, c in enumerate(classes)}
        files = [(p, index[c]) for p, c in pairs]
    else:
        paths, rejected = list_unlabeled(folder)
        files, classes = [(p, -1) for p in paths], []
    if not files:
        raise BadInput(f"{folder} holds no image files ({len(rejected)} entries left out"
                       f"{': ' + rejected[0].path + ' (' + rejected[0].reason + ')' if rejected else ''})")
    return Source(str(folder), files, folder, classes, rejected=rejected)


def split_source(prepared_dir: Path, split: str) -> Source:
    """A prepared split (rows of data.prepared_dir's sharded cache) with its file paths and classes from
    manifest.csv."""
    prepared_dir = Path(prepared_dir)
    try:
        load_split(prepared_dir, split)   # memory maps only: reads no pixels
    except FileNotFoundError as err:
        raise BadInput(f"the prepared split {split!r} is missing ({err}): "
                       "run `ssl-pipeline run` (or `ssl-pipeline prepare`) first") from None
    meta = json.loads((prepared_dir / "meta.json").read_text())
    return Source(f"prepared split {split}", root=prepared_dir, classes=list(meta["classes"]), split=split,
                  prepared_dir=prepared_dir)


def resolve_source(source: str, prepared_dir: Path, labeled: bool = False) -> Source:
    """SOURCE: a folder, or the name of a prepared split (unlabeled, train, val, test)."""
    if source in SPLITS:
        if Path(source).is_dir():
            raise BadInput(f"{source!r} is both a prepared split and a folder here: write ./{source} for the folder")
        return split_source(prepared_dir, source)
    return folder_source(Path(source), labeled)


def _manifest_rows(prepared_dir: Path, split: str) -> tuple[list[str], list[int]]:
    import pandas as pd

    frame = pd.read_csv(prepared_dir / "manifest.csv", usecols=["split", "path", "label"], keep_default_na=False)
    rows = frame[frame["split"] == split]
    return rows["path"].astype(str).tolist(), rows["label"].astype(int).tolist()


def iter_embeddings(encoder: torch.nn.Module, spec: EncoderSpec, source: Source,
                    progress: Progress | None = None) -> Iterator[tuple[list[str], list[int], torch.Tensor, list[Rejected]]]:
    """(paths, labels, vectors, rejected) chunk by chunk, for either kind of source."""
    if source.prepared_dir is None:
        for chunk in embed_files(encoder, source.files, source.root, spec.image_size, spec.in_channels,
                                 progress=progress):
            yield [str(source.root / p) for p in chunk.paths], chunk.labels, chunk.vectors, chunk.rejected
        return
    split = load_split(source.prepared_dir, source.split)
    if split.images.shape[1] != spec.in_channels:
        raise BadInput(f"the encoder takes {spec.in_channels}-channel images and the prepared split {source.split} "
                       f"holds {split.images.shape[1]}-channel ones: use an encoder trained on this data")
    paths, labels = _manifest_rows(source.prepared_dir, source.split)
    if len(paths) != len(split):   # an older manifest: name rows by position
        paths, labels = [f"{source.split}[{i}]" for i in range(len(split))], split.labels.tolist()
    start = 0
    for vectors in embed_tensor(encoder, split.images, progress=progress):
        end = start + len(vectors)
        yield paths[start:end], labels[start:end], vectors, []
        start = end


def schema(dim: int, model: str, model_uri: str, spec: EncoderSpec) -> pa.Schema:
    """model: the encoder in words; model_uri: a URI that loads the same weights later."""
    return pa.schema([("path", pa.string()), ("split", pa.string()), ("label", pa.string()),
                      ("vector", pa.list_(pa.float32(), dim))],
                     metadata={"ssl_pipeline.model": model, "ssl_pipeline.model_uri": model_uri,
                               "ssl_pipeline.encoder_spec": json.dumps(spec.to_dict())})


def write_embeddings(encoder: torch.nn.Module, spec: EncoderSpec, model: str, source: Source, out: Path,
                     progress: Progress | None = None, model_uri: str = "") -> dict:
    """Stream `source` through `encoder` into the Parquet file `out` (written to a temp name, then renamed)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    writer, rows, rejected = None, 0, list(source.rejected)
    try:
        for paths, labels, vectors, bad in iter_embeddings(encoder, spec, source, progress):
            rejected += bad
            if not paths:
                continue
            if writer is None:
                writer = pq.ParquetWriter(tmp, schema(vectors.shape[1], model, model_uri or model, spec))
            names = [source.classes[y] if 0 <= y < len(source.classes) else "" for y in labels]
            flat = pa.array(vectors.float().numpy().reshape(-1), type=pa.float32())
            column = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
            writer.write_table(pa.Table.from_arrays(
                [pa.array(paths, pa.string()), pa.array([source.split] * len(paths), pa.string()),
                 pa.array(names, pa.string()), column], schema=writer.schema))
            rows += len(paths)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise BadInput(f"no image of {source.description} could be decoded ({len(rejected)} left out)")
    tmp.replace(out)
    return {"rows": rows, "dim": int(pq.read_schema(out).field("vector").type.list_size), "rejected": rejected,
            "out": str(out)}


def read_embeddings(path: Path) -> tuple[list[str], torch.Tensor, dict[str, str]]:
    """(paths, vectors [N, D], schema metadata) of an embeddings file."""
    path = Path(path)
    if not path.exists():
        raise BadInput(f"no embeddings file at {path}: write one with `ssl-pipeline embed SOURCE --out {path}`")
    table = pq.read_table(path, columns=["path", "vector"])
    dim = table.schema.field("vector").type.list_size
    flat = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vectors = torch.from_numpy(flat.reshape(-1, dim).copy())
    meta = {k.decode(): v.decode() for k, v in (pq.read_schema(path).metadata or {}).items()}
    return table.column("path").to_pylist(), vectors, meta
