"""One run directory, one run (issue 23, item 9), with real processes: a training run is going (logs
written, no checkpoint yet), and every other way of starting it again, from one process or through the
launcher on two ranks, is refused with one line naming the running process; nothing of the running run
is touched. The run's end releases the directory."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vsrpp_dist.training.run_dir import RunLock

from ..helpers import ROOT, TINY, free_port, launch_command, launcher_env

pytestmark = pytest.mark.slow

TRAIN_PY = ROOT / "vsrpp_dist" / "train.py"
FORKS = ROOT / "tests" / "e2e" / "faults" / "cli_forks.py"


def status_step(run_dir: Path) -> int:
    try:
        text = (run_dir / "training_status.txt").read_text()
    except OSError:
        return -1
    return next((int(line.split()[1]) for line in text.splitlines() if line.startswith("step ")), -1)


def run_files(run_dir: Path) -> set[str]:
    """What the run directory holds, less the running run's own atomic-write temporaries
    (`.training_status.txt.tmp-PID` exists for a moment at every status rewrite)."""
    return {p.name for p in run_dir.iterdir() if not (p.name.startswith(".") and ".tmp-" in p.name)}


def test_a_running_run_refuses_every_second_start_naming_itself(train_shards, val_shards, tmp_path):
    run_dir = tmp_path / "run"
    common = ["--config", str(TINY), f"run.dir={run_dir}", f"data.train_shards={train_shards}",
              f"data.val_shards={val_shards}", "validation.every=0"]
    # No checkpoint before step 100000: a directory with logs and nothing to resume, as in the issue.
    # Its output goes to a file, not a pipe nobody reads while it runs: a full pipe would block the run's
    # own log writes (it logs every 2 steps) and it could then not even take its SIGTERM.
    first_err = tmp_path / "first.err"
    first_log = open(first_err, "w")
    first = subprocess.Popen([sys.executable, str(TRAIN_PY), *common, "train.total_steps=100000",
                              "checkpoint.rolling_every=0", "checkpoint.regular_every=0"], env=launcher_env(),
                             stdout=subprocess.DEVNULL, stderr=first_log, text=True, cwd=ROOT,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while status_step(run_dir) < 1:
            assert first.poll() is None and time.monotonic() < deadline, first_err.read_text()[-3000:]
            time.sleep(0.05)
        before = run_files(run_dir)
        events_before = sorted(p.name for p in (run_dir / "logs").iterdir())

        cases = {"no-flag": [], "auto-resume": ["--auto-resume"], "resume": ["--resume"], "fresh": ["--fresh"]}
        spec = {"train_py": str(TRAIN_PY), "cases": {
            name: {"argv": [*common, *flags], "stdout": str(tmp_path / f"{name}.out"),
                   "stderr": str(tmp_path / f"{name}.err")} for name, flags in cases.items()}}
        (tmp_path / "cases.json").write_text(json.dumps(spec))
        forks = subprocess.run([sys.executable, str(FORKS), str(tmp_path / "cases.json"),
                                str(tmp_path / "results.json")], env=launcher_env(), capture_output=True,
                               text=True, cwd=ROOT, timeout=180)
        assert forks.returncode == 0 and not forks.stderr, forks.stderr[-3000:]
        results = json.loads((tmp_path / "results.json").read_text())
        holder = f"is in use by pid {first.pid} on host {socket.gethostname()} (started "
        for name in cases:
            err = (tmp_path / f"{name}.err").read_text()
            print(f"{name}: exit {results[name]['code']} after {results[name]['seconds']:.1f} s: {err.strip()}")
            assert results[name]["code"] == 2, (name, err)
            assert err.count("\n") == 1 and err.startswith(f"train: error: run.dir={run_dir} {holder}"), (name, err)

        # Two ranks through the launcher: both follow rank 0's refusal, nobody waits for anybody.
        command = launch_command(run_dir, train_shards, val_shards, "--auto-resume")
        at = command.index("--config_file")
        command[at:at] = ["--main_process_port", str(free_port())]
        launch = subprocess.run(command, env=launcher_env(), capture_output=True, text=True, timeout=120)
        refusals = [line for line in launch.stderr.splitlines() if line.startswith("train: error: ")]
        assert launch.returncode != 0 and refusals, launch.stderr[-3000:]
        assert all(line.startswith(f"train: error: run.dir={run_dir} {holder}") for line in refusals), refusals

        assert first.poll() is None, "the running run went on"
        assert run_files(run_dir) == before and not list(tmp_path.glob("run.bak-*"))
        assert sorted(p.name for p in (run_dir / "logs").iterdir()) == events_before, "no second event file"
        assert (run_dir / "training.log").read_text().count("vsrpp-dist ") == 1, "no second header in the log"
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGTERM)  # a pre-emption: emergency checkpoint, then the lock goes
        code = first.wait(timeout=120)
        first_log.close()
    assert code == 128 + signal.SIGTERM, first_err.read_text()[-3000:]
    lock = RunLock.acquire(run_dir)  # the run is over: its directory is free
    lock.release()
