"""`ssl-pipeline bench` with tiny settings: the JSON it reports (no assertions on timings)."""
from __future__ import annotations

import argparse
import json

import pytest
import torch

from ssl_core import bench
from ssl_core.augment import AugmentConfig

TINY = ["--backbone", "resnet_narrow", "--width", "4", "--image-size", "16", "--batch-size", "8",
        "--steps", "2", "--warmup-steps", "1", "--rounds", "1", "--device", "cpu"]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize("channels", ["3", "1"])
def test_run_reports_every_figure(channels):
    result = bench.run(parse(TINY + ["--channels", channels, "--baseline-workers", "0"]))
    for key in ("full_samples_per_s", "model_only_samples_per_s", "baseline_samples_per_s",
                "full_over_model_only", "full_over_baseline", "peak_memory_mb",
                "full_step_ms", "model_only_step_ms", "baseline_step_ms", "data_path_ms_per_step"):
        assert result[key] > 0, key
    assert set(result["cpu_ms_per_step"]) == {"full", "model_only", "baseline"}
    assert all(v > 0 for v in result["cpu_ms_per_step"].values())
    assert result["baseline_workers_cpu_ms_per_step"] == 0   # no worker processes with --baseline-workers 0
    assert result["device"] == "cpu" and result["threads"] >= 1 and result["torch"] == torch.__version__
    assert result["full_over_model_only"] == pytest.approx(result["full_samples_per_s"] / result["model_only_samples_per_s"])
    parts = result["model_only_step_ms"] / (result["model_only_step_ms"] + result["data_path_ms_per_step"])
    assert result["full_over_model_only_from_parts"] == pytest.approx(parts)
    assert 0 < result["full_over_model_only_from_parts"] < 1
    cfg = result["config"]
    assert (cfg["method"], cfg["backbone"], cfg["image_size"], cfg["batch_size"]) == ("simclr", "resnet_narrow", 16, 8)
    assert cfg["channels"] == int(channels) and cfg["small_stem"] is True and cfg["timed_steps_per_phase"] == 2
    assert [v["out_size"] for v in cfg["views"]] == [16, 16]   # SimCLR: two views per image
    json.dumps(result)   # plain JSON types only


def test_main_prints_and_writes_json_and_counts_worker_cpu(tmp_path, capsys):
    out = tmp_path / "bench.json"
    result = bench.main(TINY + ["--baseline-workers", "1", "--no-small-stem", "--output", str(out)])
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["config"]["small_stem"] is False and printed["config"]["baseline_workers"] == 1
    assert printed["baseline_samples_per_s"] == result["baseline_samples_per_s"]
    assert result["baseline_workers_cpu_ms_per_step"] > 0


@pytest.mark.parametrize("channels", [1, 3])
def test_pil_baseline_makes_one_tensor_per_view(channels):
    cache = bench.synthetic_cache(4, channels, 16, seed=0)
    assert cache.dtype == torch.uint8 and cache.shape == (4, channels, 16, 16)
    cfg = AugmentConfig(blur_p=0.5, solarize_p=0.5)
    data = bench.PILViewsDataset(cache, [bench.pil_transform(cfg, 16, channels), bench.pil_transform(cfg, 8, channels)])
    big, small = data[1]
    assert big.shape == (channels, 16, 16) and small.shape == (channels, 8, 8)
    assert big.dtype == torch.float32 and 0 <= big.min() and big.max() <= 1


def test_identity_pil_transform_reproduces_the_cached_image():
    cache = bench.synthetic_cache(2, 3, 16, seed=1)
    identity = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_p=0.0, jitter_p=0.0, gray_p=0.0)
    (view,) = bench.PILViewsDataset(cache, [bench.pil_transform(identity, 16, 3)])[0]
    torch.testing.assert_close(view, cache[0].float() / 255, atol=1e-6, rtol=0)


def test_cli_bench_writes_output_and_takes_the_demo_stem(tmp_path):
    """`ssl-pipeline bench --output` (the command users and `make bench` run) writes the same JSON it prints."""
    import subprocess
    import sys

    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "ssl_pipeline", "bench", *TINY, "--baseline-workers", "0",
                           "--stem-stride", "2", "--output", str(out)], capture_output=True, text=True, check=True)
    written = json.loads(out.read_text())
    assert json.loads(proc.stdout) == written
    assert written["config"]["stem_stride"] == 2 and written["full_samples_per_s"] > 0
