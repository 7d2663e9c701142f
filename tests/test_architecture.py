"""The architecture is checked, not only described: import contracts (import-linter, pyproject.toml),
every module importable on its own in a fresh interpreter, and one home for the facts several
layers need."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fixtures_repo import PROJECT_ROOT

PACKAGES = ("ssl_core", "ssl_pipeline", "flows")


def project_modules() -> list[str]:
    names = []
    for package in PACKAGES:
        for path in sorted((PROJECT_ROOT / package).rglob("*.py")):
            parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """import-linter's `lint-imports` on the project at `root` (the contracts in its pyproject.toml)."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    command = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", command, "--config", str(root / "pyproject.toml")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_the_import_contracts_hold():
    done = lint_imports(PROJECT_ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


@pytest.mark.parametrize("forbidden, contract", [
    ("import mlflow", "ssl_core runs on a bare GPU box"),
    ("from ssl_pipeline.config import schema", "ssl_core runs on a bare GPU box"),
    ("from ssl_core.recipes import build_method", "no import cycles"),
])
def test_the_contracts_fail_on_a_forbidden_import(tmp_path, forbidden, contract):
    """A copy of the project with one forbidden import added to the training core: lint-imports fails
    naming the contract (the real tree is never touched)."""
    copy = tmp_path / "project"
    copy.mkdir()
    for item in (*PACKAGES, "pyproject.toml"):
        source = PROJECT_ROOT / item
        if source.is_dir():
            import shutil
            shutil.copytree(source, copy / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (copy / item).write_text(source.read_text())
    target = copy / "ssl_core/training/optim.py"
    target.write_text(target.read_text() + f"\n{forbidden}  # noqa\n")
    done = lint_imports(copy)
    assert done.returncode != 0
    broken = done.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, done.stdout[-3000:]


def test_every_module_imports_on_its_own_in_a_fresh_interpreter():
    """No module depends on another having been imported first (import cycles show up here).

    One interpreter imports the third-party libraries once, then forks a child per project module:
    each child starts with no project module imported, as a fresh interpreter would, in a fraction
    of the start-up time."""
    script = textwrap.dedent("""
        import os, sys, traceback
        import torch, torchvision, numpy, PIL, pandas, pydantic, yaml, mlflow, prefect, matplotlib  # noqa
        root, ours = sys.argv[1], ("ssl_core", "ssl_pipeline", "flows")
        assert not [m for m in sys.modules if m.split(".")[0] in ours]
        failed = []
        for name in sys.argv[2:]:
            pid = os.fork()
            if pid == 0:
                try:
                    __import__(name)
                    # every project module comes from this tree (not from another checkout on sys.path)
                    elsewhere = [m for m, mod in sys.modules.items() if m.split(".")[0] in ours
                                 and not (getattr(mod, "__file__", None) or root).startswith(root)]
                    assert not elsewhere, f"imported from outside {root}: {elsewhere}"
                except BaseException:
                    traceback.print_exc()
                    os._exit(1)
                os._exit(0)
            if os.waitpid(pid, 0)[1]:
                failed.append(name)
        print("failed:", failed)
        sys.exit(1 if failed else 0)
    """)
    skip = {"ssl_pipeline.__main__"}   # runs the CLI when imported
    modules = [m for m in project_modules() if m not in skip]
    done = subprocess.run([sys.executable, "-c", script, str(PROJECT_ROOT), *modules], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=1800, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]


def test_python_dash_m_ssl_pipeline_is_the_cli():
    done = subprocess.run([sys.executable, "-m", "ssl_pipeline", "--help"], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "usage: ssl-pipeline" in done.stdout


def test_params_yaml_and_the_schema_defaults_agree():
    """One source of defaults: every value params.yaml runs is the schema's default (the
    configuration reference shows both, so they must not drift apart)."""
    import json

    import yaml
    from pydantic import BaseModel

    from ssl_pipeline.config.schema import Params, validate

    written = validate(yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())).model_dump(mode="json")
    differ = []

    def walk(prefix: str, model: type[BaseModel], values: dict) -> None:
        for name, field in model.model_fields.items():
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                walk(f"{prefix}{name}.", field.annotation, values[name])
                continue
            default = json.loads(json.dumps(field.get_default(call_default_factory=True)))
            if default != values[name]:
                differ.append(f"{prefix}{name}: schema {default!r}, params.yaml {values[name]!r}")

    walk("", Params, written)
    assert not differ


def test_one_home_for_extensions_splits_stages_and_backbones():
    from typing import get_args

    from ssl_core.data import cache, listing
    from ssl_core.models.backbones import BACKBONE_NAMES
    from ssl_pipeline.config.schema import PretrainParams
    from ssl_pipeline.config.schema import RAW_DATASETS
    from ssl_pipeline.ingest import importer, sources, store
    from ssl_pipeline.stages import STAGE_NAMES
    from ssl_pipeline.versioning import workspace

    assert sources.IMAGE_EXTENSIONS is listing.IMAGE_EXTENSIONS
    assert set(store.CANONICAL_EXT) == set(listing.EXT_TO_FORMAT.values())   # one stored extension per format
    assert sources.LABELED_SPLITS is cache.LABELED_SPLITS and cache.SPLITS[1:] == cache.LABELED_SPLITS
    assert importer.DATASETS is workspace.DATASETS is RAW_DATASETS
    assert get_args(PretrainParams.model_fields["backbone"].annotation) == BACKBONE_NAMES
    import yaml

    assert tuple(yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]) == STAGE_NAMES
