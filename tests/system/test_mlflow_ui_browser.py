"""What a user sees in the MLflow UI for a pipeline run, checked in a real headless browser.

A real `mlflow server`; a parent "pipeline" run (with a metric curve and the label-efficiency
picture from ssl_pipeline.reports.plots) and the real `prepare` stage nested under it, as the flow runs it.
Chromium (Debian's package) is driven over the DevTools protocol: it waits until the React UI
has rendered the text asserted below, then takes screenshots. Skipped when no Chromium is
installed. Set SSL_PIPELINE_UI_SCREENSHOTS=<folder> to keep the screenshots (for the README).
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ssl_pipeline.versioning import workspace as dvcops
from ssl_pipeline.serving import servers
from ssl_pipeline.tracking import runs as tracking
from ssl_pipeline.versioning.repro import stage_env
from ui_process import READY_S
from workspace import make_pipeline_workspace

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="no chromium/google-chrome installed")]


class Browser:
    """Headless Chromium with one page, driven over the DevTools websocket."""

    def __init__(self, profile: Path, timeout: float = 120):
        from websockets.sync.client import connect   # a Prefect dependency

        self.timeout = timeout
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-port=0",
             "--window-size=1400,1000", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            assert self.proc.poll() is None, "chromium exited while starting"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as resp:
            page = next(t for t in json.load(resp) if t["type"] == "page")
        self.ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        self._id = 0
        self.call("Emulation.setDeviceMetricsOverride", width=1400, height=1000, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params) -> dict:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=self.timeout))
            if message.get("id") == self._id:
                assert "error" not in message, message
                return message.get("result", {})

    def text(self) -> str:
        result = self.call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''",
                           returnByValue=True)
        return result["result"].get("value") or ""

    def open(self, url: str, *wait_for: str) -> str:
        """Navigate and wait until every string in wait_for is rendered; returns the page text."""
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + self.timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.text()
            if all(w in text for w in wait_for):
                time.sleep(1.0)   # let images/charts finish painting before a screenshot
                return self.text()
            time.sleep(0.5)
        raise AssertionError(f"{url} never showed {wait_for}; page text:\n{text[:3000]}")

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return path

    def close(self) -> None:
        self.ws.close()
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)


def assert_not_blank(png: Path) -> None:
    assert png.exists() and png.stat().st_size > 5000
    pixels = np.asarray(Image.open(png).convert("RGB"))
    assert pixels.shape[:2] == (1000, 1400)
    assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100


def log_pipeline_run(root: Path, url: str) -> tuple[str, str, str]:
    """A parent run as flows/pipeline.py makes it, with the real prepare stage nested under it."""
    import mlflow

    from ssl_pipeline.config.schema import load_params
    from ssl_pipeline.reports.plots import label_efficiency_plot

    params = load_params(root / "params.yaml", [])
    os.environ["MLFLOW_TRACKING_URI"] = url
    try:
        exp_id = tracking.setup(params.tracking.experiment, root)
        with mlflow.start_run(run_name="pipeline", tags=tracking.run_tags("pipeline", root)) as parent:
            tracking.log_metrics_series("pretrain.loss", [4.1, 3.2, 2.6, 2.2, 2.0])
            table = pd.DataFrame([{"method": m, "init": i, "protocol": "linear", "label_fraction": f, "seed": 0,
                                   "accuracy": a} for m, i, f, a in [("simclr", "ssl", 0.1, 0.6), ("simclr", "ssl", 1.0, 0.8),
                                                                      ("scratch", "scratch", 0.1, 0.3),
                                                                      ("scratch", "scratch", 1.0, 0.7)]])
            label_efficiency_plot(table, root / "reports/label_efficiency.png", "Label efficiency")
            mlflow.log_artifact(str(root / "reports/label_efficiency.png"), artifact_path="reports")
            env = stage_env(root, {"MLFLOW_TRACKING_URI": url, tracking.PARENT_ENV: parent.info.run_id})
            proc = subprocess.run([sys.executable, "-m", "ssl_pipeline", "prepare"], cwd=root, env=env,
                                  capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
            assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        mlflow.set_tracking_uri(None)
    [child] = tracking.MlflowClient(url).search_runs([exp_id], filter_string="tags.stage = 'prepare'")
    return exp_id, parent.info.run_id, child.info.run_id


def test_mlflow_ui_shows_a_pipeline_run(tmp_path):
    root = make_pipeline_workspace(tmp_path)
    server = servers.start_mlflow(root, port=0)
    browser = None
    try:
        server.wait_ready(READY_S)
        exp_id, parent_id, child_id = log_pipeline_run(root, server.url)
        md5s = dvcops.dataset_md5s(root)
        browser = Browser(tmp_path / "chromium-profile")
        base = f"{server.url}/#/experiments/{exp_id}"
        shots = tmp_path / "shots"
        shots.mkdir()

        # The experiment's run list: the pipeline run, its stage run folded under it.
        text = browser.open(f"{base}/runs", "2 matching runs")
        assert "pipeline" in text.split("Run Name", 1)[-1]
        assert_not_blank(browser.screenshot(shots / "experiment.png"))

        # The stage run: parent link, params, metrics and the dataset inputs with their DVC md5.
        labeled = md5s["data/raw/labeled"][:36]
        text = browser.open(f"{base}/runs/{child_id}", "Parent run", labeled)
        assert "prepare" in text and "pipeline" in text.split("Parent run", 1)[1][:200]
        # The Datasets box shows the first input as "name (digest)" and folds the rest ("+1");
        # the run's tags list every dataset's full DVC md5.
        unlabeled = md5s["data/raw/unlabeled"][:36]
        datasets = text.rsplit("Datasets", 1)[-1][:600]
        assert f"unlabeled ({unlabeled})" in datasets or f"labeled ({labeled})" in datasets, datasets
        for name in ("labeled", "unlabeled"):
            assert f"data.{name}.md5\n: {md5s[f'data/raw/{name}']}" in text, datasets
        assert "n_test" in text and "Parameters (" in text
        assert_not_blank(browser.screenshot(shots / "stage_run.png"))

        # The picture, previewed in the parent run's artifacts tab.
        text = browser.open(f"{base}/runs/{parent_id}/artifacts/reports/label_efficiency.png",
                            "reports/label_efficiency.png")
        assert "mlflow-artifacts:/" in text
        assert_not_blank(browser.screenshot(shots / "artifact.png"))

        # The curve: the parent run's metric page.
        text = browser.open(f"{base}/runs/{parent_id}/model-metrics", "pretrain.loss")
        assert_not_blank(browser.screenshot(shots / "metrics.png"))

        keep = os.environ.get("SSL_PIPELINE_UI_SCREENSHOTS")
        if keep:
            shutil.copytree(shots, keep, dirs_exist_ok=True)
    finally:
        if browser is not None:
            browser.close()
        server.stop()
