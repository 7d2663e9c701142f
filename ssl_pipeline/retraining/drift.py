"""The drift gate's measurement: do the images that are new since the champion look like the ones it
was trained on, through the champion's own encoder?

The champion's pool is read from its recorded data versions (the `data.<dataset>.md5` tags on its
registered version) in the DVC cache, the current pool from the workspace's pins; images present in
both (same bytes) are the common part, the rest of the current pool is new. A seeded sample of each
(retrain.drift_sample images, so the cost does not grow with the pool) goes through the champion
encoder, and ssl_core.embeddings.drift compares them: MMD^2 and its permutation p-value. The new images
drifted when MMD^2 >= retrain.drift_threshold and p < retrain.drift_alpha.
"""
from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ssl_core.embeddings.drift import mmd_test
from ssl_core.embeddings.files import embed_files
from ssl_pipeline.config.schema import Params
from ssl_pipeline.tracking.encoders import encoder_from_saved
from ssl_pipeline.versioning.snapshots import (
    VersionFile,
    VersionNotCached,
    version_files,
)
from ssl_pipeline.versioning.workspace import dataset_md5s


@dataclass
class DriftReport:
    measured: bool                 # False: the test could not run (reason says why)
    drifted: bool | None           # None when not measured
    reason: str
    vs_version: int | None = None  # the champion encoder version whose embeddings were compared
    n_reference_pool: int = 0      # images in the champion's pool
    n_new: int = 0                 # images in the current pool the champion never saw
    stats: dict = field(default_factory=dict)   # DriftResult.as_dict() when measured

    def as_dict(self) -> dict:
        return asdict(self)

    def tags(self) -> dict[str, str]:
        """For MLflow (runs and model versions)."""
        out = {"drift.measured": str(self.measured), "drift.drifted": str(self.drifted), "drift.reason": self.reason[:500],
               "drift.n_new": str(self.n_new), "drift.n_reference_pool": str(self.n_reference_pool)}
        if self.vs_version is not None:
            out["drift.vs_encoder_version"] = str(self.vs_version)
        out.update({f"drift.{k}": f"{v:.6g}" if isinstance(v, float) else str(v) for k, v in self.stats.items()})
        return out


def pool_files(root: Path, md5s: dict[str, str]) -> list[VersionFile]:
    """Every image of the given dataset versions ({"data.<name>.md5" or path: md5}), one per distinct content."""
    seen: dict[str, VersionFile] = {}
    for md5 in sorted(set(md5s.values())):
        for f in version_files(root, md5):
            seen.setdefault(f.md5, f)
    return sorted(seen.values(), key=lambda f: f.md5)


def _sample(files: list[VersionFile], n: int, seed: int) -> list[VersionFile]:
    if len(files) <= n:
        return files
    keep = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return [files[i] for i in keep.tolist()]


def _embed(encoder, spec, files: list[VersionFile]) -> torch.Tensor:
    """Decode the files from the DVC cache, where objects have no extension: each is read through a link
    named with its file's extension (the decoder picks the format by it, as for the file itself)."""
    with tempfile.TemporaryDirectory() as tmp:
        items = []
        for i, f in enumerate(files):
            link = Path(tmp) / f"{i}{Path(f.relpath).suffix.lower()}"
            link.symlink_to(f.path)
            items.append((link, -1))
        chunks = [c.vectors for c in embed_files(encoder, items, Path(tmp), spec.image_size, spec.in_channels)]
    return torch.cat(chunks) if chunks else torch.zeros(0, 1)


def measure(params: Params, root: Path, champion_tags: dict[str, str], champion_saved: dict,
            encoder_version: int | None) -> DriftReport:
    """New images (current pool minus the champion's) against the champion's pool, through its encoder."""
    r = params.retrain
    recorded = {k: v for k, v in champion_tags.items() if k.startswith("data.") and k.endswith(".md5")}
    current = dataset_md5s(root, params.data.raw_dir)
    try:
        reference, now = pool_files(root, recorded), pool_files(root, current)
    except VersionNotCached as err:
        return DriftReport(False, None, f"drift not measured: {err}", encoder_version)
    known = {f.md5 for f in reference}
    new = [f for f in now if f.md5 not in known]
    report = DriftReport(False, None, "", encoder_version, len(reference), len(new))
    if len(new) < 2 or len(reference) < 2:
        report.measured, report.drifted = True, False
        report.reason = (f"{len(new)} new image(s) since the champion's pool of {len(reference)}: "
                         "too few to differ, no drift")
        return report
    encoder, spec = encoder_from_saved(champion_saved)
    with torch.no_grad():
        ref_vec = _embed(encoder, spec, _sample(reference, r.drift_sample, params.seed))
        new_vec = _embed(encoder, spec, _sample(new, r.drift_sample, params.seed + 1))
    if len(ref_vec) < 2 or len(new_vec) < 2:
        report.reason = "drift not measured: fewer than 2 decodable images in a pool"
        return report
    result = mmd_test(ref_vec, new_vec, permutations=r.drift_permutations, seed=params.seed)
    report.measured, report.stats = True, result.as_dict()
    report.drifted = result.mmd2 >= r.drift_threshold and result.p_value < r.drift_alpha
    verdict = "drifted" if report.drifted else "no drift"
    report.reason = (f"{verdict}: MMD^2 {result.mmd2:.4f} (threshold {r.drift_threshold:g}), p = {result.p_value:.4f} "
                     f"(alpha {r.drift_alpha:g}); {len(new)} new image(s) vs the champion's {len(reference)}, "
                     f"{result.n_current} and {result.n_reference} embedded")
    return report


def against_champion(params: Params, root: Path, champion_tags: dict[str, str], encoder_uri: str) -> DriftReport:
    """measure() with the champion encoder loaded from the registry (models:/NAME/VERSION)."""
    from ssl_pipeline.tracking.encoders import ModelNotFound, load_saved_method

    try:
        saved, source = load_saved_method(encoder_uri)
    except ModelNotFound as err:
        return DriftReport(False, None, f"drift not measured: {err}")
    return measure(params, root, champion_tags, saved, source.version)
