"""dvc.yaml against the code it runs: every module a stage executes is one of the stage's deps
(so a code change can never leave a result stale while DVC says "up to date"), and every output
the stages write (ssl_pipeline/outputs.py) is one of its outs."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from fixtures_repo import PROJECT_ROOT
from ssl_pipeline.stages import STAGE_NAMES

PACKAGES = ("ssl_core", "ssl_pipeline", "flows")
# Modules a stage calls that cannot change what it writes: they record (MLflow, DVC state), report
# progress or raise. They are not followed: what they import does not run the stage's work.
RECORD_ONLY = ("ssl_pipeline.tracking", "ssl_pipeline.versioning", "ssl_pipeline.progress", "ssl_pipeline.errors",
               "ssl_pipeline.interrupt")
DVC = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]


def module_file(name: str) -> Path | None:
    base = PROJECT_ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return path
    return None


def imported_modules(name: str) -> set[str]:
    """Project modules `name` imports (module- or function-level), with the packages on the way."""
    tree = ast.parse(module_file(name).read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for target in targets:
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                candidate = ".".join(parts[:i])
                if parts[0] in PACKAGES and module_file(candidate):
                    found.add(candidate)
    return found


def executed_modules(stage: str) -> set[str]:
    """Everything `python -m ssl_pipeline <stage>` runs for the stage's work: the stage module and
    the params schema (every stage validates params.yaml first), and what they import, transitively."""
    todo, seen = [f"ssl_pipeline.stages.{stage}", "ssl_pipeline.config.schema"], set()
    while todo:
        name = todo.pop()
        if name in seen or name.startswith(RECORD_ONLY):
            continue
        seen.add(name)
        todo.extend(imported_modules(name))
    return seen


def covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(PROJECT_ROOT).as_posix()
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_every_module_a_stage_runs_is_a_dep_of_that_stage(stage):
    deps = [d if isinstance(d, str) else next(iter(d)) for d in DVC[stage]["deps"]]
    missing = sorted(name for name in executed_modules(stage)
                     if not covered(module_file(name), deps) and module_file(name).read_text().strip())
    assert not missing, f"dvc.yaml stage {stage!r} runs these modules without depending on them: {missing}"


def test_the_dependency_walk_sees_through_function_level_imports():
    """The kNN code reaches the evaluate stage through ssl_core.evaluation.grid: the walk must see it."""
    assert "ssl_core.evaluation.protocols" in executed_modules("evaluate")
    assert "ssl_pipeline.reports.plots" in executed_modules("evaluate")


def test_every_stage_output_is_a_dvc_out():
    from ssl_pipeline import outputs

    outs = {next(iter(o)) if isinstance(o, dict) else o
            for stage in DVC.values() for key in ("outs", "metrics", "plots") for o in stage.get(key, [])}
    written = {str(v) for k, v in vars(outputs).items() if k.isupper() and isinstance(v, Path)}
    # INDEX_CSV: in models/classifiers; LOGGED_MODELS_JSON holds run ids, kept out of what dvc.lock hashes
    not_outs = {str(p) for p in (outputs.PRETRAIN_CHECKPOINT_DIR, outputs.DISTRIBUTED_HANDOFF_DIR,
                                 outputs.COMPARE_CHECKPOINT_DIR, outputs.INDEX_CSV, outputs.LOGGED_MODELS_JSON,
                                 outputs.INIT_WEIGHTS_DIR, outputs.RUNS_DIR)}   # INIT_WEIGHTS_DIR: a cache of fetched inputs, named by their digest
    assert written - not_outs <= outs, sorted(written - not_outs - outs)
