"""Two measured claims of the README, as reproducible reports on the workspace's prepared data:

- warm start: after 10 % more unlabeled images, a cold challenger (full pretraining schedule, random
  weights) against a warm one (ssl_core.recipes.warm_start from the "champion" trained on the pool
  before the new images, retrain.warm_epochs with its own warm-up + cosine): kNN test accuracy and
  pretraining time (wall and CPU seconds) of each;
- drift: the drift gate's statistic (MMD^2, permutation p-value) through the workspace's encoder for
  10 % more images of the same pool, and for the same images inverted (255 - pixel), against the rest;
- selection: 1 % of the labeled train split chosen by k-center greedy on the encoder's embeddings
  (labels hidden) against 1 % chosen uniformly at random, 3 seeds each; a linear probe and a
  fine-tuned classifier on each choice, accuracy on the test split. Uncertainty sampling needs a
  classifier before it has labels, so it runs as one active-learning round: half the budget at random
  (random's own first half), a linear probe on it, the other half by that probe's smallest margins,
  over the whole pool or balanced over k-means clusters.

Both train through the same recipes as the pipeline (ssl_pipeline/recipes.py) in this process;
nothing is logged to MLflow. `ssl-pipeline measure warm-start|drift|select` writes JSON and markdown.
"""
from __future__ import annotations

import dataclasses
import json
import resource
import time
from pathlib import Path
from typing import Callable

import torch

from ssl_core.data.cache import Split, load_meta, load_split
from ssl_core.embeddings.drift import mmd_test
from ssl_core.embeddings.files import embed_tensor
from ssl_core.embeddings.select import (balanced_by_cluster, kcenter_greedy, kmeans, least_margin, margins,
                                        random_choice)
from ssl_core.evaluation.grid import fit_cell
from ssl_core.evaluation.protocols import accuracy, knn_accuracy
from ssl_core.models.spec import load_encoder
from ssl_core.recipes import PretrainData, build_method, pretrain_method
from ssl_core.recipes.warm_start import saved_method, warm_start
from ssl_core.training.runtime import setup_torch
from ssl_pipeline import outputs
from ssl_pipeline.config.schema import Params
from ssl_pipeline.recipes import finetune_recipe, pretrain_recipe

Note = Callable[[str], None]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _timed(fn):
    wall, cpu = time.perf_counter(), _cpu_seconds()
    out = fn()
    return out, round(time.perf_counter() - wall, 1), round(_cpu_seconds() - cpu, 1)


def _pretrain(recipe, unlabeled: Split, data: dict, device, start: dict | None, note: Note):
    """(method, kNN test accuracy, wall s, CPU s): the times cover building, loading and training, not the kNN."""
    def train():
        method = build_method(recipe)
        if start is not None:
            note(f"warm start: {warm_start(method, start).reason}")
        return pretrain_method(recipe, method, PretrainData(unlabeled), device)[0]

    method, wall, cpu = _timed(train)
    knn = knn_accuracy(method.backbone, data["train"], data["test"], data["num_classes"], device, recipe.knn_k)
    return method, knn, wall, cpu


def warm_vs_cold(params: Params, root: Path, new_fraction: float = 0.1, note: Note = print) -> dict:
    """Champion on the pool without the new images; then cold and warm challengers on the whole pool."""
    prepared = Path(root) / params.data.prepared_dir
    meta = load_meta(prepared)
    device = setup_torch(params.pretrain.device)
    pool = load_split(prepared, "unlabeled")
    n_new = round(len(pool) * new_fraction / (1 + new_fraction))
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(params.seed))
    old_pool = pool.subset(order[n_new:].sort().values)
    data = {"train": load_split(prepared, "train"), "test": load_split(prepared, "test"), "num_classes": meta["num_classes"]}
    cold = pretrain_recipe(params, meta)
    warm = dataclasses.replace(cold, epochs=params.retrain.warm_epochs, warmup_epochs=params.retrain.warm_warmup_epochs)
    rows = {}
    for name, recipe, unlabeled, start in (("champion (before the new images)", cold, old_pool, None),
                                           ("cold challenger", cold, pool, None)):
        note(f"pretraining the {name}: {recipe.epochs} epochs on {len(unlabeled)} images")
        method, knn, wall, cpu = _pretrain(recipe, unlabeled, data, device, start, note)
        rows[name] = {"epochs": recipe.epochs, "images": len(unlabeled), "knn_test": knn, "wall_s": wall, "cpu_s": cpu}
        if start is None and name.startswith("champion"):
            champion = saved_method(method.cpu(), recipe.encoder)
    note(f"pretraining the warm challenger: {warm.epochs} epochs on {len(pool)} images from the champion")
    _, knn, wall, cpu = _pretrain(warm, pool, data, device, champion, note)
    rows["warm challenger"] = {"epochs": warm.epochs, "images": len(pool), "knn_test": knn, "wall_s": wall, "cpu_s": cpu}
    c, w = rows["cold challenger"], rows["warm challenger"]
    return {"method": cold.method, "new_images": n_new, "rows": rows,
            "warm_minus_cold_knn": round(w["knn_test"] - c["knn_test"], 4),
            "warm_share_of_cold_wall": round(w["wall_s"] / max(c["wall_s"], 1e-9), 3),
            "warm_share_of_cold_cpu": round(w["cpu_s"] / max(c["cpu_s"], 1e-9), 3)}


def drift_examples(params: Params, root: Path, new_fraction: float = 0.1, note: Note = print) -> dict:
    """The gate's two branches on this data: held-out pool images as they are, and inverted."""
    r = params.retrain
    prepared = Path(root) / params.data.prepared_dir
    device = setup_torch(params.pretrain.device)
    pool = load_split(prepared, "unlabeled")
    encoder, _ = load_encoder(Path(root) / outputs.ENCODER_JSON, Path(root) / outputs.ENCODER_PT)
    n_new = round(len(pool) * new_fraction / (1 + new_fraction))
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(params.seed))
    new_idx, old_idx = order[:n_new][:r.drift_sample], order[n_new:][:r.drift_sample]
    reference = torch.cat(list(embed_tensor(encoder, pool.images[old_idx.sort().values], device)))
    rows = {}
    for name, images in (("same distribution", pool.images[new_idx]), ("inverted", 255 - pool.images[new_idx])):
        vectors = torch.cat(list(embed_tensor(encoder, images, device)))
        result = mmd_test(reference, vectors, permutations=r.drift_permutations, seed=params.seed)
        drifted = result.mmd2 >= r.drift_threshold and result.p_value < r.drift_alpha
        rows[name] = {**result.as_dict(), "drifted": drifted}
        note(f"{name}: MMD^2 {result.mmd2:.4f} p {result.p_value:.4f} -> {'drift' if drifted else 'no drift'}")
    return {"new_images": n_new, "threshold": r.drift_threshold, "alpha": r.drift_alpha, "rows": rows}


def drift_markdown(result: dict) -> str:
    lines = [f"Drift gate on {result['new_images']} new images (threshold MMD^2 {result['threshold']:g}, "
             f"alpha {result['alpha']:g}):", "",
             "| new images | embedded (new / reference) | MMD^2 | p-value | gate |", "|---|---|---|---|---|"]
    for name, r in result["rows"].items():
        lines.append(f"| {name} | {r['n_current']} / {r['n_reference']} | {r['mmd2']:.4f} | {r['p_value']:.4f} | "
                     f"{'drift: pretrain' if r['drifted'] else 'no drift: reuse the encoder'} |")
    return "\n".join(lines)


SELECTION_STRATEGIES = ("random", "kcenter", "kcenter by cluster", "uncertainty", "uncertainty by cluster")


@torch.no_grad()
def _probe_margins(model: torch.nn.Module, split: Split, device, batch: int = 512) -> torch.Tensor:
    model = model.to(device).eval()
    probs = [torch.softmax(model(split.images[i:i + batch].to(device).float().div_(255)).float(), 1).cpu()
             for i in range(0, len(split), batch)]
    return margins(torch.cat(probs))


def _uncertainty_round(first: list[int], budget: int, margin_of: Callable[[list[int]], torch.Tensor],
                       clusters: torch.Tensor | None) -> list[int]:
    """`first` (labeled at random) plus budget - len(first) more by the smallest margins of a probe fitted on
    `first`, over the rest of the pool or balanced over its clusters."""
    margin = margin_of(first)
    taken = torch.zeros(len(margin), dtype=torch.bool)
    taken[first] = True
    rest, left = torch.nonzero(~taken).flatten(), budget - len(first)
    if clusters is None:
        return first + rest[least_margin(margin[rest], left)].tolist()
    picks = balanced_by_cluster(clusters[rest], left, lambda idx, q: least_margin(margin[rest][idx], q))
    return first + rest[picks].tolist()


def selection_vs_random(params: Params, root: Path, fraction: float = 0.01, seeds: int = 3,
                        note: Note = print, strategies: tuple[str, ...] = SELECTION_STRATEGIES) -> dict:
    """k-center and uncertainty (each also balanced over k-means clusters) vs random choices of `fraction`
    of the train split."""
    prepared = Path(root) / params.data.prepared_dir
    meta = load_meta(prepared)
    device = setup_torch(params.pretrain.device)
    train, val, test = (load_split(prepared, s) for s in ("train", "val", "test"))
    encoder, _ = load_encoder(Path(root) / outputs.ENCODER_JSON, Path(root) / outputs.ENCODER_PT)
    vectors = torch.cat(list(embed_tensor(encoder, train.images, device)))
    budget = max(int(round(fraction * len(train))), meta["num_classes"])
    clusters = kmeans(vectors, meta["num_classes"], seed=params.seed)
    recipe = finetune_recipe(params)

    def probe_margins(seed: int) -> Callable[[list[int]], torch.Tensor]:
        def margin_of(first: list[int]) -> torch.Tensor:
            probe, _ = fit_cell(recipe, "linear", encoder, train.subset(first), val, meta["num_classes"], device,
                                recipe.cell_seed(seed))
            return _probe_margins(probe, train, device)
        return margin_of

    half = lambda s: random_choice(len(train), budget // 2, s)   # noqa: E731  (random's own first half)
    choosers = {"random": lambda s: random_choice(len(train), budget, s),
                "kcenter": lambda s: kcenter_greedy(vectors, budget, seed=s),
                "kcenter by cluster": lambda s: balanced_by_cluster(
                    clusters, budget, lambda idx, q: kcenter_greedy(vectors[idx], q, seed=s)),
                "uncertainty": lambda s: _uncertainty_round(half(s), budget, probe_margins(s), None),
                "uncertainty by cluster": lambda s: _uncertainty_round(half(s), budget, probe_margins(s), clusters)}
    rows = []
    for strategy in strategies:
        choose = choosers[strategy]
        for seed in range(seeds):
            idx = choose(seed)
            subset = train.subset(idx)
            classes = len(set(subset.labels.tolist()))
            for protocol in recipe.protocols:
                model, _ = fit_cell(recipe, protocol, encoder, subset, val, meta["num_classes"], device,
                                    recipe.cell_seed(seed))
                acc = accuracy(model.to(device), test, device)
                note(f"{strategy} seed {seed}: {len(idx)} labels, {classes} classes, {protocol} test acc {acc:.4f}")
                rows.append({"strategy": strategy, "seed": seed, "protocol": protocol, "labels": len(idx),
                             "classes_covered": classes, "accuracy": acc, "chosen": [int(i) for i in idx]})
    return {"budget": budget, "fraction": fraction, "train_images": len(train), "num_classes": meta["num_classes"],
            "rows": rows}


def warm_markdown(result: dict) -> str:
    lines = [f"Warm vs cold challenger ({result['method']}), after {result['new_images']} new images:", "",
             "| encoder | epochs | pool | kNN test | pretraining wall s | CPU s |", "|---|---|---|---|---|---|"]
    for name, r in result["rows"].items():
        lines.append(f"| {name} | {r['epochs']} | {r['images']} | {r['knn_test']:.4f} | {r['wall_s']} | {r['cpu_s']} |")
    lines += ["", f"warm - cold kNN: {result['warm_minus_cold_knn']:+.4f}; warm/cold time: "
                  f"{result['warm_share_of_cold_wall']:.0%} wall, {result['warm_share_of_cold_cpu']:.0%} CPU"]
    return "\n".join(lines)


def selection_markdown(result: dict) -> str:
    import pandas as pd

    table = pd.DataFrame(result["rows"])
    lines = [f"{result['budget']} labels ({result['fraction']:.0%} of {result['train_images']} train images), "
             "test accuracy, mean (min-max) over seeds:", "",
             "| strategy | protocol | accuracy | per seed | classes covered |", "|---|---|---|---|---|"]
    for (strategy, protocol), g in table.groupby(["strategy", "protocol"], sort=False):
        per = ", ".join(f"{a:.3f}" for a in g.accuracy)
        lines.append(f"| {strategy} | {protocol} | {g.accuracy.mean():.3f} ({g.accuracy.min():.3f}-{g.accuracy.max():.3f}) "
                     f"| {per} | {', '.join(str(c) for c in g.classes_covered)} of {result['num_classes']} |")
    return "\n".join(lines)


def write_report(result: dict, markdown: str, out: Path) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=2))
    (out / "report.md").write_text(markdown + "\n")
