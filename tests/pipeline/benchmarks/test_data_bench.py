"""`ssl-pipeline bench data` at a tiny size, as the README shows it: every figure the issue asks for is
in the JSON, the re-prepare decodes exactly the added images and leaves the old shards' bytes alone."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_bench_data_reports_every_figure(tmp_path, capsys):
    from ssl_pipeline.cli.main import main

    out = tmp_path / "bench.json"
    assert main(["bench", "data", "--images", "60", "--image-size", "32", "--workers", "2", "--added", "0.05",
                 "--classes", "2", "--labeled-per-class", "8", "--pretrain-batch", "16", "--pretrain-steps", "1",
                 "--workdir", str(tmp_path / "work"), "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["import"]["files"] == 60 and result["import"]["raw_plus_dvc_cache_bytes"] > 0
    assert result["import"]["dvc_add"]["seconds"] > 0
    one, two = result["prepare"]["1_workers"], result["prepare"]["2_workers"]
    assert one["counts"]["n_decoded"] == two["counts"]["n_decoded"] == 60 + 16
    assert one["images_per_s"] > 0 and one["peak_rss_mb"] > 0 and "speedup" in result["prepare"]
    again = result["re_prepare"]
    assert again["added"] == 3 and again["counts"]["n_decoded"] == 3 and again["old_shards_unchanged"]
    assert result["cache_bytes"] == (60 + 16) * 3 * 32 * 32
    assert result["pretrain"]["full_over_model_only"] > 0 and result["pretrain"]["rss_anon_max_mb"] > 0
    assert not (tmp_path / "work").exists()   # cleaned up without --keep


def test_bench_data_again_on_a_kept_workspace(tmp_path, capsys):
    """benchmarks/bench_data_again.py (the README's re-measurement): a full prepare from scratch, then exactly
    the added photos decoded, the old shards' bytes kept; twice on the same workspace, new photos each time."""
    import os
    import subprocess
    import sys

    from fixtures_repo import PROJECT_ROOT
    from ssl_pipeline.cli.main import main

    work = tmp_path / "work"
    assert main(["bench", "data", "--images", "40", "--image-size", "32", "--workers", "1", "--classes", "2",
                 "--labeled-per-class", "8", "--pretrain-batch", "16", "--pretrain-steps", "1",
                 "--workdir", str(work), "--keep"]) == 0
    for run in (1, 2):
        out = tmp_path / f"again{run}.json"
        done = subprocess.run([sys.executable, str(PROJECT_ROOT / "benchmarks/bench_data_again.py"), str(work),
                               "--added", "4", "--workers", "1", "--pretrain-steps", "1", "--output", str(out)],
                              cwd=PROJECT_ROOT, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(out.read_text())
        full, again = result["full_1_workers"], result["re_prepare"]
        assert full["counts"]["n_decoded"] == 40 + 1 + 4 * (run - 1) + 16   # the bench's 1 % added, earlier runs' 4
        assert again["counts"]["n_decoded"] == 4 and again["old_shards_unchanged"]
        assert result["pretrain"]["rss_anon_max_mb"] > 0
