"""A pretraining process for crash tests: the tests start it, SIGKILL it mid-run, start it again.

    python tests/helpers/crash_worker.py core --method moco --ckpt-dir D --out OUT.pt [--delay 0.05]
        Tiny deterministic pretraining through the real loop (ssl_core.training.loop.pretrain) with the
        real Checkpointer and a kNN monitor at every epoch end; prints "step N" after every step
        and writes the final method/optimizer state to OUT.pt.
    python tests/helpers/crash_worker.py stage [--delay S] [--pause-before-end DIR] -- pretrain [CLI args]
        The real CLI (`python -m ssl_pipeline pretrain`), with two test-only hooks: a sleep after every
        optimizer step (so a test can kill it mid-run), and a pause before the final model logging
        (DIR/paused appears; the run continues once DIR/go exists).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

torch.set_num_threads(1)

# Tiny on purpose: 40 images of 16 px, batch 8 -> 5 steps per epoch, 3 epochs.
IMAGES, SIZE, BATCH, EPOCHS, CLASSES = 40, 16, 8, 3, 4
METHOD_PARAMS = {"simclr": {"hidden_dim": 32, "projection_dim": 16},
                 "moco": {"version": "v2", "queue_size": 24, "hidden_dim": 32, "projection_dim": 16, "bn_splits": 2}}


_MLFLOW_TEMPLATE: Path | None = None


def fresh_mlflow_db(path: Path) -> str:
    """An empty, migrated MLflow SQLite store at `path`; returns its URI. Tests import this: the
    schema migrations (seconds) run once per process and every store after that is a file copy."""
    global _MLFLOW_TEMPLATE
    if _MLFLOW_TEMPLATE is None or not _MLFLOW_TEMPLATE.exists():
        import atexit
        import shutil
        import tempfile

        from mlflow.tracking import MlflowClient

        folder = Path(tempfile.mkdtemp(prefix="ssl-mlflow-template-"))
        atexit.register(shutil.rmtree, folder, True)
        MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()   # creates the schema
        _MLFLOW_TEMPLATE = folder / "mlflow.db"
    import shutil

    shutil.copy(_MLFLOW_TEMPLATE, path)
    return f"sqlite:///{path}"


def tiny_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, 3, S, S] with a class-dependent brightness pattern, and their labels."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(IMAGES) % CLASSES
    base = torch.randint(0, 120, (IMAGES, 3, SIZE, SIZE), generator=gen)
    base[:, :, : SIZE // 2] += (labels * 40).view(-1, 1, 1, 1)
    return base.clamp(0, 255).to(torch.uint8), labels


def build(method_name: str, seed: int = 0):
    from ssl_core.methods import get_method_class
    from ssl_core.models import build_backbone

    torch.manual_seed(seed)   # as the stage does: identical initial weights in every process
    backbone = build_backbone("resnet_narrow", 3, SIZE, small_stem=True, width=4, stem_stride=1)
    return get_method_class(method_name).build(backbone, METHOD_PARAMS[method_name], {}, (3, SIZE, SIZE))


def train_core(method_name: str, ckpt_dir: Path, out: Path, every: int = 2, delay: float = 0.0) -> list[dict]:
    """Tiny pretraining through the real loop, Checkpointer and kNN monitor; final state -> `out`."""
    from ssl_core.training.checkpoint import Checkpointer
    from ssl_core.data.cache import Split
    from ssl_core.fsutil import atomic_torch_save
    from ssl_core.evaluation.protocols import knn_accuracy
    from ssl_core.training.loop import TrainConfig, pretrain

    images, labels = tiny_data()
    labeled = Split(images, labels)
    method = build(method_name)
    cfg = TrainConfig(epochs=EPOCHS, batch_size=BATCH, optimizer="adamw", lr=3e-3, weight_decay=1e-4,
                      warmup_epochs=1, seed=0, log_every=1)
    ckpt = Checkpointer(Path(ckpt_dir), fingerprint=f"crash-worker-{method_name}", every_steps=every)
    info = ckpt.resume_info()
    print(f"resume {info['global_step'] if info else 0}", flush=True)

    def on_step(state, loss: float) -> None:
        print(f"step {state.global_step}", flush=True)
        time.sleep(delay)

    def on_epoch_end(epoch: int, metrics: dict) -> None:
        # The stage's monitor: eval-mode features must not disturb BatchNorm statistics or any RNG.
        metrics["knn_accuracy"] = knn_accuracy(method.backbone, labeled, labeled, CLASSES, torch.device("cpu"), k=5)
        method.train()

    history = pretrain(method, images, cfg, on_epoch_end=on_epoch_end, on_step=on_step, checkpointer=ckpt)
    atomic_torch_save({"method": method.state_dict(), "history": history}, Path(out))
    print("done", flush=True)
    return history


def run_stage(args: argparse.Namespace) -> int:
    import ssl_core.training.loop as train_module
    from ssl_pipeline.cli import main as cli
    from ssl_pipeline.stages import pretrain as pretrain_stage

    real_step = train_module.train_step

    def slow_step(*a, **kw):
        out = real_step(*a, **kw)
        time.sleep(args.delay)
        return out

    train_module.train_step = slow_step
    if args.pause_before_end:
        flags = Path(args.pause_before_end)
        real_log = pretrain_stage.log_torch_model

        def paused_log(*a, **kw):
            (flags / "paused").touch()
            while not (flags / "go").exists():
                time.sleep(0.05)
            return real_log(*a, **kw)

        pretrain_stage.log_torch_model = paused_log
    return cli.main(args.cli_args)


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    core = sub.add_parser("core")
    core.add_argument("--method", choices=sorted(METHOD_PARAMS), required=True)
    core.add_argument("--ckpt-dir", required=True)
    core.add_argument("--out", required=True)
    core.add_argument("--every", type=int, default=2)
    core.add_argument("--delay", type=float, default=0.0)
    stage = sub.add_parser("stage")
    stage.add_argument("--delay", type=float, default=0.0)
    stage.add_argument("--pause-before-end", default="")
    stage.add_argument("cli_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.mode == "core":
        train_core(args.method, Path(args.ckpt_dir), Path(args.out), args.every, args.delay)
        return 0
    args.cli_args = [a for a in args.cli_args if a != "--"]
    return run_stage(args)


if __name__ == "__main__":
    sys.exit(main())
