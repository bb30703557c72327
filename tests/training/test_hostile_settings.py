"""Settings that cannot fit in memory: refused in one line naming the setting before the run directory
exists (absurd values at config load, too much for this machine at start-up), and an out-of-memory in a
step said as such, in one line, instead of a traceback or a count of "corrupt samples"."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from vsrpp_dist.config import ConfigError, load_config
from vsrpp_dist.errors import TrainingError

from ..helpers import ROOT, TINY, make_config, train


def start(tmp_path, *overrides) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vsrpp_dist.train", "--config", str(TINY),
                           f"run.dir={tmp_path}/run", *overrides], capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("override, message", [
    ("data.batch_size_per_gpu=1000000000", "data.batch_size_per_gpu: 1000000000 is above the maximum 65536"),
    ("model.channels=1000000000", "model.channels: 1000000000 is above the maximum 4096"),
    ("data.lr_patch_size=100000", "data.lr_patch_size: 100000 is above the maximum 4096"),
])
def test_absurd_sizes_are_refused_at_config_load(override, message):
    with pytest.raises(ConfigError, match=f"^{message}$"):
        load_config(TINY, [override])


def test_settings_too_large_for_this_machine_are_one_line_before_the_run_directory(train_shards, tmp_path):
    cases = {
        ("model.channels=4096", "model.propagation_blocks=1000"): "model.channels=4096: a model of ",
        ("data.batch_size_per_gpu=65536", "data.lr_patch_size=1024"): "data.batch_size_per_gpu=65536: one step of ",
    }
    for overrides, start_of_message in cases.items():
        done = start(tmp_path, f"data.train_shards={train_shards}", *overrides)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert lines[0].startswith(f"train: error: {start_of_message}") and "(out of memory)" in lines[0], lines
        assert not (tmp_path / "run").exists()


def test_an_out_of_memory_step_is_said_as_such_in_one_line(train_shards, val_shards, tmp_path):
    run_dir = tmp_path / "run"

    def oom_at_step_3(trainer):
        step = trainer.train_step

        def patched(batches):
            if trainer.state.step == 2:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            return step(batches)

        trainer.train_step = patched

    with pytest.raises(TrainingError, match=r"^out of memory in training step 3 \(OutOfMemoryError\) with "
                                            r"data.batch_size_per_gpu=2, data.lr_patch_size=16, model.channels=8; "):
        train(make_config(run_dir, train_shards, val_shards, "train.total_steps=6", "validation.every=0"),
              patch=oom_at_step_3)
    log = (run_dir / "training.log").read_text()
    assert "out of memory in training step 3" in log and "Traceback" not in log


def test_out_of_memory_in_a_loader_worker_is_not_counted_as_corrupt_samples(train_shards, monkeypatch):
    from vsrpp_dist.data import stream
    from vsrpp_dist.errors import DataStreamError

    def no_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(stream, "make_clip", no_memory)
    loader = stream.build_train_loader(train_shards, load_config(TINY).data, seed=0, rank=0, world_size=1, batch_size=2)
    with pytest.raises(DataStreamError, match=r"out of memory while making clips \(data.batch_size_per_gpu=2, "):
        next(iter(loader))
