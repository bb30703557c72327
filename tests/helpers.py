"""What several test modules use: building a tiny run's config, training in this process, launching
ranks through the real launcher, and reading back what a run wrote. (Fixtures live in conftest.py.)"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vsrpp_dist.config import ModelConfig, config_to_dict, load_config
from vsrpp_dist.model.architecture import build_model
from vsrpp_dist.weights import WEIGHTS_FORMAT, read_weights
from vsrpp_dist.weights import save_weights as write_weights_file
from vsrpp_dist.training.run_dir import StartRequest
from vsrpp_dist.training.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny.yaml"
LAUNCH_STEPS = 40  # the launcher runs' length
FIXTURES = ROOT / "tests" / "fixtures"
# the model of configs/tiny.yaml, for weights files made without training
TINY_MODEL = dict(channels=8, extract_blocks=1, propagation_blocks=1, reconstruction_blocks=1, upsample_channels=8)


def pack_training_shards(frames: Path, out: Path, *options: str) -> Path:
    """The shared training shards' packing (conftest.train_shards) of `frames`, with more `options`."""
    from vsrpp_dist.data.pack_command import main as pack

    assert pack([str(frames), str(out), "--min-tile", "48", "--frames-per-sample", "7", "--shard-size", "150K",
                 *options]) == 0
    return out


def write_validation_frames(root: Path) -> Path:
    """The shared validation footage (conftest.val_shards): 2 sequences of 6 frames, 48x48, real photos."""
    from vsrpp_dist.tools.demo_data import write_frame_folders

    write_frame_folders(root, sequences=2, frames=6, frame_hw=(48, 48), seed=7, photos=("coffee", "chelsea"))
    return root


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
    return read_weights(run_dir / "checkpoint_latest").state_dict


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


def proc_children(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc (no psutil)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry.name))
    return children


def proc_env(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def save_weights(path: Path, seed: int = 0, model_config: dict | None = None, **overrides) -> Path:
    """A weights file as a checkpoint writes it (model.safetensors), of a tiny random model."""
    cfg = ModelConfig(**{**TINY_MODEL, **overrides})
    torch.manual_seed(seed)
    model = build_model(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_weights_file(path, model.state_dict(), model_config=model_config or config_to_dict(cfg), ema=False, step=7,
                       provenance=[])
    return path


def save_legacy_weights(path: Path, seed: int = 0, **overrides) -> Path:
    """A weights.pt as checkpoints wrote it before safetensors (a torch.save of a dict of tensors)."""
    cfg = ModelConfig(**{**TINY_MODEL, **overrides})
    torch.manual_seed(seed)
    model = build_model(cfg)
    payload = {"format": WEIGHTS_FORMAT, "version": 1, "model_config": config_to_dict(cfg),
               "state_dict": {k: v.detach().float().contiguous() for k, v in model.state_dict().items()},
               "ema": False, "step": 7}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path


def run(capsys, module, *argv) -> tuple[int, str, str]:
    """A command in-process through run_cli, as `python -m` runs it."""
    rc = module.cli([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def read_pngs(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


class OneProcess:
    """What Validator asks of an Accelerator, on one CPU process."""

    process_index, num_processes, is_main_process, device = 0, 1, True, torch.device("cpu")
    gather = staticmethod(lambda t: t)
    autocast = staticmethod(contextlib.nullcontext)


class Quiet:
    """An Observer that records nothing."""

    def info(self, *args):
        pass

    def image(self, *args):
        pass


def write_coded_video(path: Path, frames: list[np.ndarray], codec: str, pix_fmt: str = "yuv420p") -> None:
    """A 10 frame/s video of RGB frames through `codec` (PyAV), for the readers' tests."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = pix_fmt
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def copy_shards(source: Path, dest: Path, member=None, manifest=None) -> Path:
    """A copy of a packed folder with its tar members and manifest changed, as a damaged or hostile
    dataset would be: `member(name, data)` returns the member's new bytes (None drops it), `manifest(m)`
    edits the manifest in place. Sizes and checksums in the manifest are those of the new shards, so a
    damaged member is only found where it is decoded."""
    import hashlib
    import io
    import json
    import tarfile

    dest.mkdir(parents=True)
    data = json.loads((source / "manifest.json").read_text())
    for entry in data["shards"]:
        out = io.BytesIO()
        with tarfile.open(source / entry["file"]) as tar_in, tarfile.open(fileobj=out, mode="w") as tar_out:
            for info in tar_in.getmembers():
                content = tar_in.extractfile(info).read()
                if member is not None:
                    content = member(info.name, content)
                    if content is None:
                        continue
                info.size = len(content)
                tar_out.addfile(info, io.BytesIO(content))
        (dest / entry["file"]).write_bytes(out.getvalue())
        entry["bytes"], entry["sha256"] = len(out.getvalue()), hashlib.sha256(out.getvalue()).hexdigest()
    if manifest is not None:
        manifest(data)
    (dest / "manifest.json").write_text(json.dumps(data))
    return dest
