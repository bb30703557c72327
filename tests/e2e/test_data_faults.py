"""Data that never arrives, with real processes, real signals and a real server on 127.0.0.1: a server
trickling one byte a second, one that sends the shard and never ends the body, one that answers random
bytes. No read waits past its deadline, and a stop signal ends a run that waits for data within seconds,
with an emergency checkpoint when there is something to save. RELIABILITY.md tabulates the results."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vsrpp_dist.config import load_config
from vsrpp_dist.data.stream import build_train_loader
from vsrpp_dist.signals import STOP_GRACE_S
from vsrpp_dist.tools.loopback import QuietFileHandler, http_folder
from vsrpp_dist.training.checkpoint import list_complete

from ..helpers import ROOT, TINY

pytestmark = pytest.mark.slow


class HostileHandler(QuietFileHandler):
    """Serves the folder, except the shard GETs that `server.hostile(n)` picks, which follow the server's
    `mode`: "trickle" sends one byte a second; "endless" sends the whole shard but declares more and never
    ends the body; "random" answers random bytes of the right length."""

    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        name = self.path.split("?")[0].lstrip("/")
        server = self.server
        if not name.endswith(".tar"):
            return super().do_GET()
        with server.lock:
            server.shard_requests += 1
            hostile = server.hostile(server.shard_requests)
        if not hostile:
            return super().do_GET()
        data = (Path(self.directory) / name).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data) + (1 << 20 if server.mode == "endless" else 0)))
        self.end_headers()
        try:
            if server.mode == "trickle":
                server.trickling.set()
                for i in range(len(data)):
                    if server.release.wait(1.0):
                        return
                    self.wfile.write(data[i:i + 1])
                    self.wfile.flush()
            elif server.mode == "endless":
                self.wfile.write(data)
                self.wfile.flush()
                server.release.wait(120)
            else:
                self.wfile.write(os.urandom(len(data)))
        except OSError:  # the client went away: that is what it should do
            pass
        self.close_connection = True


def serve(folder: Path, mode: str, hostile=lambda n: True):
    """The folder over HTTP on 127.0.0.1; shard request n (from 1) is answered the `mode` way when
    `hostile(n)`."""
    context = http_folder(folder, HostileHandler)
    url, server = context.__enter__()
    server.mode, server.hostile, server.shard_requests = mode, hostile, 0
    server.lock, server.release, server.trickling = threading.Lock(), threading.Event(), threading.Event()

    def close():
        server.release.set()
        context.__exit__(None, None, None)

    return url, server, close


def start_run(tmp_path: Path, train_url: str, *overrides: str) -> tuple[subprocess.Popen, Path]:
    run_dir = tmp_path / "run"
    log = open(tmp_path / "output.txt", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "vsrpp_dist.train", "--config", str(TINY), f"run.dir={run_dir}",
         f"data.train_shards={train_url}", "validation.every=0", "train.total_steps=400", "train.log_every=1",
         "checkpoint.rolling_every=0", "checkpoint.regular_every=0", *overrides],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
        start_new_session=True)
    return process, run_dir


def stop_and_time(process: subprocess.Popen) -> tuple[int, float]:
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("SIGTERM did not end a run that waits for data within 60 s")
    return code, time.monotonic() - sent


def test_sigterm_ends_a_run_stuck_on_a_trickling_server_at_step_0(train_shards, tmp_path):
    url, server, close = serve(train_shards.parent, "trickle")
    try:
        process, run_dir = start_run(tmp_path, f"{url}/{train_shards.name}", "data.num_workers=0")
        assert server.trickling.wait(90), (tmp_path / "output.txt").read_text()
        time.sleep(1.0)  # well inside its 30 s read timeout: only the signal can end it now
        assert process.poll() is None
        code, seconds = stop_and_time(process)
    finally:
        close()
    output = (tmp_path / "output.txt").read_text()
    print(f"SIGTERM while waiting for data at step 0: exit {code} after {seconds:.1f} s")
    assert code == 143 and seconds < STOP_GRACE_S + 5, output
    assert "while waiting for data" in output and "nothing new to save" in output
    assert list_complete(run_dir) == []
    assert "Traceback" not in output


def test_sigterm_while_waiting_for_data_saves_the_steps_made(train_shards, tmp_path):
    url, server, close = serve(train_shards.parent, "trickle", hostile=lambda n: n > 3)
    try:
        process, run_dir = start_run(tmp_path, f"{url}/{train_shards.name}", "data.num_workers=1",
                                     "data.shuffle_buffer_mb=0")
        assert server.trickling.wait(90), (tmp_path / "output.txt").read_text()
        time.sleep(1.5)
        code, seconds = stop_and_time(process)
    finally:
        close()
    output = (tmp_path / "output.txt").read_text()
    checkpoints = list_complete(run_dir)
    print(f"SIGTERM while waiting for data after some steps: exit {code} after {seconds:.1f} s, "
          f"checkpoints {[c.path.name for c in checkpoints]}")
    assert code == 143 and seconds < STOP_GRACE_S + 5, output
    assert len(checkpoints) == 1 and checkpoints[0].kind == "emergency" and checkpoints[0].step > 0, output
    steps_logged = [line for line in output.splitlines() if f"step {checkpoints[0].step}/" in line]
    assert steps_logged, output
    assert "Traceback" not in output


def data_cfg(*overrides):
    return load_config(TINY, ["data.remote_backoff_s=0.01", *overrides]).data


def test_a_trickling_shard_misses_its_deadline_and_is_skipped(train_shards):
    # the first shard, both attempts at it (one retry); a retry that succeeded would change nothing
    url, server, close = serve(train_shards.parent, "trickle", hostile=lambda n: n <= 2)
    try:
        cfg = data_cfg("data.remote_timeout_s=1", "data.remote_retries=1", "data.num_workers=0")
        loader = build_train_loader(f"{url}/{train_shards.name}", cfg, seed=0, rank=0, world_size=1, batch_size=2)
        started = time.monotonic()
        with pytest.warns(RuntimeWarning) as warned:
            batches = list(itertools.islice(loader, 6))
        seconds = time.monotonic() - started
    finally:
        close()
    # two attempts of ~1.6 s each (1 s + 150 kB at 0.25 MB/s), instead of a byte a second for 40 hours; on a
    # loaded machine the server's thread can also starve a single read past the 1 s read timeout: either
    # way the shard is given up within its deadline
    messages = [str(w.message) for w in warned]
    assert any("slower than 0.25 MB/s on average" in m or "timeout" in m.lower() or "timed out" in m.lower()
               for m in messages), messages
    assert sum(b["skipped"][1] for b in batches) == 1 and seconds < 15


def test_a_body_that_never_ends_is_read_up_to_the_manifests_size(train_shards):
    url, server, close = serve(train_shards.parent, "endless")
    try:
        cfg = data_cfg("data.remote_timeout_s=30", "data.num_workers=0")
        loader = build_train_loader(f"{url}/{train_shards.name}", cfg, seed=0, rank=0, world_size=1, batch_size=2)
        started = time.monotonic()
        batches = list(itertools.islice(loader, 10))
        seconds = time.monotonic() - started
    finally:
        close()
    assert seconds < 15  # not one 30 s read timeout per shard
    assert sum(b["skipped"][1] for b in batches) == 0  # every shard matched its checksum over its real bytes


def test_a_server_answering_random_bytes_is_one_line(train_shards, tmp_path):
    url, server, close = serve(train_shards.parent, "random")
    try:
        done = subprocess.run([sys.executable, "-m", "vsrpp_dist.train", "--config", str(TINY),
                               f"run.dir={tmp_path}/run", f"data.train_shards={url}/{train_shards.name}",
                               "validation.every=0", "train.total_steps=4", "data.num_workers=1"],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
    finally:
        close()
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert errors[-1].startswith("train: error: rank 0 worker 0: no usable sample in epoch 0"), done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    log = (tmp_path / "run" / "training.log").read_text()
    assert "Traceback" not in log and "no usable sample" in log


def test_sigterm_to_a_two_rank_launch_stuck_on_its_data(train_shards, val_shards, tmp_path):
    """Two ranks through the real launcher; the server starts trickling after the first shards. SIGTERM
    to the launcher (a pre-emption) ends the whole launch within seconds: the rank that waits gives up
    after the grace, rank 0 saves the steps made, the other rank sees it gone."""
    from ..helpers import launch_command, launcher_env

    url, server, close = serve(train_shards.parent, "trickle", hostile=lambda n: n > 6)
    run_dir = tmp_path / "run"
    command = launch_command(run_dir, f"{url}/{train_shards.name}", val_shards, "validation.every=0",
                             "train.total_steps=400", "checkpoint.rolling_every=0", "checkpoint.regular_every=0",
                             "data.shuffle_buffer_mb=0")
    with open(tmp_path / "output.txt", "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=launcher_env(), stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        assert server.trickling.wait(120), (tmp_path / "output.txt").read_text()
        time.sleep(2.0)
        code, seconds = stop_and_time(process)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        close()
    output = (tmp_path / "output.txt").read_text()
    checkpoints = list_complete(run_dir)
    print(f"SIGTERM to a 2-rank launch waiting for data: exit {code} after {seconds:.1f} s, "
          f"checkpoints {[c.path.name for c in checkpoints]}")
    assert code != 0 and seconds < 20, output
    assert "while waiting for data" in output, output
    assert all(c.kind == "emergency" for c in checkpoints), output
