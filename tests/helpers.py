"""What several test modules use: building a tiny run's config, training in this process, launching
ranks through the real launcher, and reading back what a run wrote. (Fixtures live in conftest.py.)"""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

import torch

from vsrpp_dist.config import load_config
from vsrpp_dist.training.run_dir import StartRequest
from vsrpp_dist.training.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny.yaml"
LAUNCH_STEPS = 40  # the launcher runs' length


def make_config(run_dir, train_shards, val_shards, *overrides):
    return load_config(TINY, [f"run.dir={run_dir}", f"data.train_shards={train_shards}",
                              f"data.val_shards={val_shards}", *overrides])


def train(cfg, request=StartRequest(), patch=None):
    """Build a Trainer in this process, optionally `patch` it, train; returns (trainer, exit code)."""
    trainer = Trainer(cfg, request, interactive=False)
    if patch:
        patch(trainer)
    try:
        code = trainer.train()
    finally:
        trainer.close()
    return trainer, code


def sigterm_after_step(n: int):
    """A `patch` for `train` that sends this process SIGTERM once step n is done (a pre-emption)."""
    def patch(trainer) -> None:
        step = trainer.train_step

        def patched(batches):
            result = step(batches)
            if trainer.state.step == n:
                os.kill(os.getpid(), signal.SIGTERM)
            return result

        trainer.train_step = patched

    return patch


def read_scalars(run_dir: Path, tag: str) -> dict[int, float]:
    """All values of a tag over every event file in RUN/logs (a resumed run adds a file)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[int, float] = {}
    for path in sorted((run_dir / "logs").glob("events.out.tfevents.*")):
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})
        events.Reload()
        if tag in events.Tags()["scalars"]:
            for event in events.Scalars(tag):
                assert event.step not in values or values[event.step] == event.value, f"{tag} step {event.step} twice"
                values[event.step] = event.value
    return values


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoint_latest" / "weights.pt", weights_only=True)["state_dict"]


def launch_command(run_dir: Path, train_shards: Path, val_shards: Path, *extra: str) -> list[str]:
    """Two CPU ranks over gloo through `accelerate launch vsrpp_dist/train.py`."""
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "launch" / "cpu_2proc.yaml"),
        str(ROOT / "vsrpp_dist" / "train.py"), "--config", str(TINY),
        f"run.dir={run_dir}", f"data.train_shards={train_shards}", f"data.val_shards={val_shards}",
        f"train.total_steps={LAUNCH_STEPS}", "train.log_every=1", "data.num_workers=2", "validation.every=10",
        "checkpoint.rolling_every=10", "checkpoint.regular_every=20", "checkpoint.best_period=20",
        "checkpoint.best_window_start=5", "checkpoint.best_window_end=15", *extra,
    ]


def launcher_env() -> dict[str, str]:
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
