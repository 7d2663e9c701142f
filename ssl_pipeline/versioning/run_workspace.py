"""Where a pipeline run's DVC stages run, and one pipeline run per workspace at a time.

A run without `--set` runs its stages in the workspace. A run whose overrides change what a stage
reads gets a run workspace of its own, because DVC reads a stage's params from params.yaml in the
folder the stage runs in (and records them in dvc.lock), and `dvc repro` cannot be told to read them
elsewhere. The options weighed (DVC 3):
- writing the overrides into the tracked params.yaml for the run (this project's old way, and what
  `dvc exp run --set-param` does in the workspace): a concurrent run reads the other's settings, a
  kill -9 leaves the file rewritten, its comments are lost;
- `dvc exp run --temp` / `--queue`: a temporary copy, but DVC checks every tracked input out into it
  (the whole image set again, copied where the file system has no reflinks), leaves untracked files
  out (a `data import` not yet committed), runs all stages as one command (no per-stage Prefect task,
  retry or resume) and keeps the results in an experiment ref until `dvc exp apply`, which rewrites
  params.yaml in the workspace;
- a run workspace (chosen): .dvc/tmp/ssl-runs/<digest of the effective params>/, a DVC project of
  its own (no git; DVC ignores .dvc/tmp) sharing the workspace's DVC cache, holding
    params.yaml         params.yaml plus the overrides, generated (the tracked file is never written)
    dvc.yaml, dvc.lock  the workspace's, so DVC skips unchanged stages as usual
    the code packages   that dvc.yaml's stages depend on (ssl_core/, ssl_pipeline/), as they are now
    <raw_dir>/*.dvc     the data pins; the images are checked out (hardlinks) only if prepare runs
    stage outputs       checked out from the shared cache (hardlinks); uncached ones copied.
  When the run succeeds it is adopted: its dvc.lock replaces the workspace's (recording the values it
  ran with), its outputs are checked out in the workspace from the cache, and it is removed. A run
  that fails or is killed keeps its run workspace: the same overrides again resume its checkpoint.

Whole runs are serialised per workspace by `pipeline_lock` (the DVC lock covers one command, the
stage lock one stage): a second run waits for the first, then starts from what it left.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import yaml

from ssl_core.fsutil import LockBusy, atomic_write_bytes, exclusive_lock
from ssl_pipeline.config.overrides import apply_overrides
from ssl_pipeline.outputs import RUNS_DIR
from ssl_pipeline.versioning.workspace import _json_out, dvc, dvc_root

LINK_TYPES = "hardlink,symlink,copy"   # outputs and images as links into the shared cache, never copies


def lock_path(root: Path) -> Path:
    # Outside the workspace, like the DVC lock: nothing for git or DVC to see.
    key = hashlib.sha1(str(dvc_root(Path(root))).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"ssl-pipeline-run-{key}.lock"


@contextlib.contextmanager
def pipeline_lock(root: Path, what: str = "pipeline run") -> Iterator[None]:
    """Hold the workspace's pipeline lock for a whole run; wait (saying so once) for a running one."""
    where = dvc_root(Path(root))
    me = f"{what}, pid {os.getpid()}, since {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC"

    def say_waiting(holder: str) -> None:
        print(f"waiting for the run in {where} to finish ({holder}) ...", file=sys.stderr, flush=True)

    with exclusive_lock(lock_path(where), holder=me, on_wait=say_waiting, notice_after=1.0, poll_s=0.2):
        yield


def effective_text(params_path: Path, overrides: list[str]) -> str:
    raw = apply_overrides(yaml.safe_load(params_path.read_text()) or {}, overrides)
    header = (f"# Generated for one run: {params_path.name} with --set {' --set '.join(overrides)}\n"
              "# (the workspace's params.yaml is not changed; DVC reads this file for this run)\n")
    return header + yaml.safe_dump(raw, sort_keys=False)


def needs_own_workspace(params_path: Path, overrides: list[str]) -> bool:
    """True when the overrides change a value that a stage (a separate process reading params.yaml) reads."""
    if not overrides:
        return False
    tracked = yaml.safe_load(params_path.read_text()) or {}
    effective = apply_overrides(json.loads(json.dumps(tracked)), overrides)
    return any(_value(tracked, key) != _value(effective, key) for key in stage_params(params_path.parent))


def stage_params(root: Path) -> set[str]:
    """The params keys dvc.yaml's stages read ("data", "retrain.start_from", ...): the one list of them.
    Keys only the flows read (flow, compare, most of retrain) need no run workspace."""
    path = Path(root) / "dvc.yaml"
    stages = (yaml.safe_load(path.read_text()) or {}).get("stages", {}) if path.exists() else {}
    return {key for stage in stages.values() for key in stage.get("params", []) if isinstance(key, str)}


def _value(tree: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


@dataclass
class RunWorkspace:
    root: Path          # the workspace
    dvc_root: Path      # where this run's stages run: the workspace, or its own run workspace
    params_text: str    # the params this run uses, as a file
    raw_missing: bool = False   # its images are not checked out (prepare is unchanged)

    @property
    def own(self) -> bool:
        return self.dvc_root != self.root

    def repro_options(self, stage: str) -> list[str]:
        """`dvc repro` options for `stage` here: without the images, an unchanged prepare is skipped."""
        return ["--allow-missing"] if self.raw_missing and stage == "prepare" else []


def open_run(root: Path, params_file: str, overrides: list[str]) -> RunWorkspace:
    """The workspace itself, or the run workspace for these overrides (built, or refreshed when a
    failed or killed run left it: its checkpoint and outputs stay)."""
    root = Path(root).resolve()
    params_path = root / params_file
    if not needs_own_workspace(params_path, overrides):
        return RunWorkspace(root, root, params_path.read_text())
    text = effective_text(params_path, overrides)
    run_dir = root / RUNS_DIR / hashlib.sha256(text.split("\n", 2)[2].encode()).hexdigest()[:16]
    fresh = not (run_dir / ".dvc").is_dir()
    if fresh:
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        _init(root, run_dir)
    _copy_definitions(root, run_dir, text, fresh)
    if fresh and (run_dir / "dvc.lock").exists():
        stages = list((yaml.safe_load((root / "dvc.yaml").read_text()) or {}).get("stages", {}))
        dvc("checkout", "-q", "--allow-missing", *stages, cwd=run_dir)
        _copy_uncached_outputs(root, run_dir)
    run = RunWorkspace(root, run_dir, text, raw_missing=not _raw_present(run_dir, text))
    if run.raw_missing and _would_run(run_dir, "prepare", [pin[:-4] for pin in _raw_pins(run_dir, text)]):
        dvc("checkout", "-q", *_raw_pins(run_dir, text), cwd=run_dir)   # hardlinks: no copy of the images
        run.raw_missing = False
    return run


def adopt(run: RunWorkspace) -> None:
    """Make the finished run the workspace's state: its dvc.lock, its outputs; then remove it."""
    if not run.own:
        return
    stages = list((yaml.safe_load((run.root / "dvc.yaml").read_text()) or {}).get("stages", {}))
    atomic_write_bytes((run.dvc_root / "dvc.lock").read_bytes(), run.root / "dvc.lock")
    dvc("checkout", "-q", "-f", *stages, cwd=run.root)
    _copy_uncached_outputs(run.dvc_root, run.root)
    discard(run)


def discard(run: RunWorkspace) -> None:
    if run.own:
        shutil.rmtree(run.dvc_root, ignore_errors=True)


@contextlib.contextmanager
def pipeline_run(root: Path, params_file: str, overrides: list[str], what: str = "pipeline run",
                 finish: Callable[[RunWorkspace], None] = adopt) -> Iterator[RunWorkspace]:
    """The whole run under the pipeline lock, in its RunWorkspace; `finish` (adopt, or discard for
    work whose results live elsewhere) runs when the block succeeds."""
    with pipeline_lock(root, what):
        run = open_run(root, params_file, overrides)
        yield run
        finish(run)


def stage_lock_path(root: Path, stage: str) -> Path:
    key = hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"ssl-pipeline-stage-{key}-{stage}.lock"


@contextlib.contextmanager
def stage_lock(root: Path, stage: str) -> Iterator[None]:
    """One `stage` at a time in the folder `root` (two pretrains there would share one checkpoint);
    a second one is refused at once, naming the first."""
    me = f"pid {os.getpid()}, since {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC"
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(exclusive_lock(stage_lock_path(root, stage), timeout=0, holder=me))
        except LockBusy as busy:
            raise StageBusy(f"another {stage} is running in {Path(root).resolve()} ({busy.holder}); not starting a "
                            "second one (they would share one checkpoint and outputs): wait for it to finish") from None
        yield


class StageBusy(RuntimeError):
    """The same stage already runs in this folder."""


def _init(root: Path, run_dir: Path) -> None:
    cache = dvc("cache", "dir", cwd=root).stdout.strip().splitlines()[-1]
    dvc("init", "-q", "--no-scm", cwd=run_dir)
    dvc("config", "--local", "cache.dir", cache, cwd=run_dir)
    dvc("config", "--local", "cache.type", LINK_TYPES, cwd=run_dir)


def _copy_definitions(root: Path, run_dir: Path, text: str, with_lock: bool) -> None:
    """dvc.yaml, params, code (refreshed every time: the run uses the workspace's code as it is now),
    the data pins, and on a fresh run workspace the workspace's dvc.lock."""
    shutil.copy2(root / "dvc.yaml", run_dir / "dvc.yaml")
    (run_dir / "params.yaml").write_text(text)
    if with_lock and (root / "dvc.lock").exists():
        shutil.copy2(root / "dvc.lock", run_dir / "dvc.lock")
    for name in _code_entries(root):
        target = run_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        if (root / name).is_dir():
            shutil.copytree(root / name, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(root / name, target)
    for pin in _raw_pins(root, text):
        (run_dir / pin).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / pin, run_dir / pin)


def _stage_files(root: Path) -> tuple[set[str], set[str]]:
    """(deps, outputs incl. metrics and plots) of every stage in dvc.yaml, as paths."""
    stages = (yaml.safe_load((root / "dvc.yaml").read_text()) or {}).get("stages", {})
    deps, outs = set(), set()
    for stage in stages.values():
        deps.update(str(d) for d in stage.get("deps", []))
        for kind in ("outs", "metrics", "plots"):
            outs.update(str(next(iter(o))) if isinstance(o, dict) else str(o) for o in stage.get(kind, []))
    return deps, outs


def _code_entries(root: Path) -> list[str]:
    """The top-level code the stages depend on: whole packages, so `python -m ssl_pipeline` imports."""
    deps, outs = _stage_files(root)
    tops = {d.split("/")[0] for d in deps if d not in outs}
    return sorted(t for t in tops if t.endswith(".py") or ((root / t).is_dir() and any((root / t).glob("*.py"))))


def _uncached_outputs(root: Path) -> list[str]:
    stages = (yaml.safe_load((root / "dvc.yaml").read_text()) or {}).get("stages", {})
    found = []
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                if isinstance(entry, dict) and next(iter(entry.values()), {}).get("cache") is False:
                    found.append(next(iter(entry)))
    return found


def _copy_uncached_outputs(source: Path, target: Path) -> None:
    """DVC does not cache these (cache: false), so a checkout cannot bring them: copy them."""
    for rel in _uncached_outputs(source):
        if (source / rel).is_file():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes((source / rel).read_bytes(), target / rel)


def _raw_pins(root: Path, text: str) -> list[str]:
    raw_dir = (yaml.safe_load(text) or {}).get("data", {}).get("raw_dir", "data/raw")
    return sorted(str(p.relative_to(root)) for p in (root / raw_dir).glob("*.dvc"))


def _raw_present(run_dir: Path, text: str) -> bool:
    return all((run_dir / pin[:-4]).exists() for pin in _raw_pins(run_dir, text))


def _would_run(run_dir: Path, stage: str, missing: list[str]) -> bool:
    """Whether `dvc repro` would run `stage` here for a reason other than the `missing` deps (DVC's
    --allow-missing skips a stage whose only change is missing data)."""
    status = _json_out(dvc("status", "--json", stage, cwd=run_dir)).get(stage, [])
    for entry in status:
        if not isinstance(entry, dict):   # "changed command", "always changed", ...
            return True
        for kind, changed in entry.items():
            if kind != "changed deps" or any(path not in missing or state != "deleted" for path, state in changed.items()):
                return True
    return False
