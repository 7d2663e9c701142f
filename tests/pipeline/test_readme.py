"""The README's quick start and configuration reference stay true."""
from __future__ import annotations


from ssl_pipeline.config.reference import readme_with_reference

from fixtures_repo import PROJECT_ROOT as ROOT


def test_config_reference_matches_the_schema():
    readme = (ROOT / "README.md").read_text()
    assert readme == readme_with_reference(readme), "run `ssl-pipeline config --write-readme README.md`"


def test_quick_start_shows_the_two_commands_first():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make run", "make test"]


def test_ci_calls_make_test():
    assert "make test" in (ROOT / ".ci/run").read_text()
