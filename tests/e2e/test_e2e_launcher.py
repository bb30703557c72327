"""End to end through the real launcher: two CPU ranks over gloo, `accelerate launch vsrpp_dist/train.py`.

One uninterrupted run is compared with a run that is stopped by SIGTERM (sent to the launcher, as a
cluster does on pre-emption), moved to another directory and resumed: every step's loss and the final
weights must be identical.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ..helpers import (LAUNCH_STEPS, ROOT, TINY, final_weights, free_port, launch_command, launcher_env, proc_children,
                       proc_env, read_scalars)

pytestmark = pytest.mark.slow

STEPS = LAUNCH_STEPS


@pytest.fixture(scope="module")
def uninterrupted(train_shards, val_shards, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("e2e") / "uninterrupted"
    done = subprocess.run(launch_command(run_dir, train_shards, val_shards), env=launcher_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


def test_two_ranks_train_validate_and_checkpoint(uninterrupted):
    run = uninterrupted
    log = (run / "training.log").read_text()
    assert "2 process(es)" in log
    assert f"weights identical on all 2 ranks at step {STEPS}" in log
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert f"final-{STEPS:08d}" in names and "regular-00000020" in names
    best = (run / "checkpoint_best").resolve()
    assert best.parent == (run / "checkpoints").resolve()
    assert 5 <= int(best.name.split("-")[1]) % 20 <= 15  # inside the best window
    for link in ("checkpoint_latest", "checkpoint_best"):
        assert not os.path.isabs(os.readlink(run / link))
    latest = run / "checkpoint_latest"
    for rank in (0, 1):
        assert (latest / f"rng_state_{rank}.safetensors").is_file(), "every rank saves its own RNG state"
    assert (run / "config.yaml").is_file() and (run / "training_status.txt").is_file()
    losses = read_scalars(run, "Loss/Total")
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert read_scalars(run, "Metrics/KI_PSNR"), "validation ran"
    # only rank 0 writes TensorBoard: one event file for one start
    assert len(list((run / "logs").glob("events.out.tfevents.*"))) == 1


def test_sigterm_then_resume_from_a_moved_directory_continues_exactly(uninterrupted, train_shards, val_shards,
                                                                      tmp_path):
    run_dir = tmp_path / "stopped"
    proc = subprocess.Popen(launch_command(run_dir, train_shards, val_shards), env=launcher_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    status = run_dir / "training_status.txt"
    deadline = time.monotonic() + 240
    stopped_at = None
    while time.monotonic() < deadline and proc.poll() is None:
        if status.is_file():
            text = status.read_text()
            step_line = [line for line in text.splitlines() if line.startswith("step ")]
            if step_line and int(step_line[0].split()[1]) >= 3:
                proc.send_signal(signal.SIGTERM)  # to the launcher, as SLURM does
                stopped_at = int(step_line[0].split()[1])
                break
        time.sleep(0.02)
    output, _ = proc.communicate(timeout=120)
    assert stopped_at is not None, "the run finished before it could be stopped:\n" + output[-2000:]
    assert stopped_at < STEPS
    emergency = (run_dir / "checkpoint_latest").resolve()
    assert emergency.name.startswith("emergency-"), output[-3000:]
    assert (emergency / "rng_state_0.safetensors").is_file() and (emergency / "rng_state_1.safetensors").is_file()

    moved = tmp_path / "moved" / "elsewhere"
    moved.parent.mkdir()
    shutil.move(str(run_dir), moved)
    assert (moved / "checkpoint_latest" / "meta.json").is_file(), "relative symlinks survive the move"
    done = subprocess.run(launch_command(moved, train_shards, val_shards, "--resume"), env=launcher_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from {moved}/checkpoints/{emergency.name}" in (moved / "training.log").read_text()

    expected = read_scalars(uninterrupted, "Loss/Total")
    got = read_scalars(moved, "Loss/Total")
    assert sorted(got) == sorted(expected), "every step logged exactly once across stop and resume"
    assert got == expected, "losses after resume differ from the uninterrupted run"
    assert read_scalars(moved, "Training/LearningRate") == read_scalars(uninterrupted, "Training/LearningRate")
    a, b = final_weights(uninterrupted), final_weights(moved)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_machines_on_loopback(train_shards, val_shards, tmp_path):
    """Two `accelerate launch` commands with --num_machines 2, one process each, as on two nodes that
    share the run directory: both train, only the main machine writes logs, checkpoints hold both."""
    run_dir = tmp_path / "multinode"
    port = free_port()
    procs = []
    for machine in (0, 1):
        command = [sys.executable, "-m", "accelerate.commands.launch",
                   "--config_file", str(ROOT / "launch" / "multi_node.yaml"), "--num_machines", "2",
                   "--num_processes", "2", "--machine_rank", str(machine), "--main_process_ip", "127.0.0.1",
                   "--main_process_port", str(port), str(ROOT / "vsrpp_dist" / "train.py"), "--config", str(TINY),
                   f"run.dir={run_dir}", f"data.train_shards={train_shards}", f"data.val_shards={val_shards}"]
        with open(tmp_path / f"machine{machine}.txt", "w") as output:  # the launcher keeps its own copy
            procs.append(subprocess.Popen(command, env=launcher_env(), stdout=output, stderr=subprocess.STDOUT))
    # A machine whose launch fails leaves the other's torch elastic agent in its exit barrier for 300 s:
    # stop waiting as soon as one has failed, and say which.
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        if any(p.poll() not in (None, 0) for p in procs):
            break
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    outputs = [(tmp_path / f"machine{machine}.txt").read_text() for machine in (0, 1)]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    # gloo torn down under a rank that had not finished kills it (SIGABRT) after training: never again
    assert not any("terminate called" in output for output in outputs)
    log = (run_dir / "training.log").read_text()
    assert "2 process(es)" in log and "weights identical on all 2 ranks at step 8" in log
    assert "finished: step 8" in log
    assert "INFO" not in outputs[1], "the second machine prints warnings only"
    assert len(list((run_dir / "logs").glob("events.out.tfevents.*"))) == 1
    latest = run_dir / "checkpoint_latest"
    assert (latest / "rng_state_0.safetensors").is_file() and (latest / "rng_state_1.safetensors").is_file()


def test_two_ranks_initialised_from_a_checkpoint_start_and_stay_identical(uninterrupted, train_shards, val_shards,
                                                                         tmp_path):
    """init.from with two ranks: each rank reads the weights itself; the replicas start from the source's
    exact weights (DDP's broadcast would hide a rank that loaded something else, so the first checkpoint's
    weights are compared with the source) and stay identical (the replica check at every checkpoint)."""
    from vsrpp_dist.training.state_files import read_tree
    from vsrpp_dist.weights import read_weights

    source = (uninterrupted / "checkpoint_best").resolve()
    run_dir = tmp_path / "initialised"
    done = subprocess.run(launch_command(run_dir, train_shards, val_shards, f"init.from={uninterrupted}",
                                         "train.total_steps=4", "checkpoint.rolling_every=2", "validation.every=0",
                                         "init.freeze=extract", "init.freeze_steps=4"),
                          env=launcher_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    log = (run_dir / "training.log").read_text()
    assert f"init: starting from raw weights of {source / 'model.safetensors'}" in log
    assert "weights identical on all 2 ranks at step 2" in log and "weights identical on all 2 ranks at step 4" in log
    start = read_weights(source).state_dict
    after = read_tree((run_dir / "checkpoint_latest").resolve() / "training_state.safetensors")["model"]
    extract = [k for k in start if k.startswith("feature_extractor.")]
    assert extract and all(torch.equal(after[k], start[k]) for k in extract)  # frozen: the source's, exactly
    assert any(not torch.equal(after[k], start[k]) for k in start if k not in extract)


def self_healing_command(run_dir: Path, train_shards: Path, val_shards: Path) -> list[str]:
    """The launch of `uninterrupted`, as launch/README's self-healing form: the launcher restarts the
    job when a rank dies (--max_restarts), and --auto-resume makes every attempt continue the run."""
    command = launch_command(run_dir, train_shards, val_shards, "--auto-resume")
    at = command.index("--config_file")
    command[at:at] = ["--max_restarts", "2", "--monitor_interval", "0.5", "--main_process_port", str(free_port())]
    return command


def test_a_rank_killed_twice_heals_itself_and_ends_with_the_uninterrupted_weights(uninterrupted, train_shards,
                                                                                   val_shards, tmp_path):
    """kill -9 of rank 1 (rank 0 survives, writes a crash checkpoint and must let go of the run's lock),
    then, in the restarted job, kill -9 of rank 0 (the lock's holder dies; rank 1 writes nothing): each
    time the launcher restarts both ranks, which take the lock again and resume the newest checkpoint,
    without a person. The run must end with exactly the uninterrupted run's weights and losses."""
    run_dir = tmp_path / "healing"
    launcher = subprocess.Popen(self_healing_command(run_dir, train_shards, val_shards), env=launcher_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    status = run_dir / "training_status.txt"
    killed_at: list[float] = []

    def step() -> int:
        try:
            return next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("step "))
        except (OSError, StopIteration, ValueError, IndexError):
            return -1

    def kill_rank(rank: int, attempt: int, after_step: int) -> int:
        deadline = time.monotonic() + 120  # a start takes seconds; a restart that hangs never gets there
        while time.monotonic() < deadline and launcher.poll() is None:
            pids = [pid for pid in proc_children(launcher.pid)
                    if proc_env(pid).get("RANK") == str(rank)
                    and proc_env(pid).get("TORCHELASTIC_RESTART_COUNT") == str(attempt)]
            now = step()
            if pids and now >= after_step:
                os.kill(pids[0], signal.SIGKILL)
                killed_at.append(time.monotonic())
                return now
            time.sleep(0.01)
        raise AssertionError(f"attempt {attempt} never reached step {after_step} (launcher exit {launcher.poll()})")

    try:
        first = kill_rank(1, attempt=0, after_step=12)
        log = run_dir / "training.log"
        deadline = time.monotonic() + 120
        while "(restart 1)" not in (log.read_text() if log.is_file() else "") and time.monotonic() < deadline:
            time.sleep(0.05)
        back = time.monotonic() - killed_at[0]
        second = kill_rank(0, attempt=1, after_step=first + 8)
        output, _ = launcher.communicate(timeout=120)
        done = time.monotonic() - killed_at[1]
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
    print(f"rank 1 killed after step {first}: restarted job logging {back:.1f} s later; rank 0 of the restarted job "
          f"killed after step {second}: launch exit {launcher.returncode} {done:.1f} s later")
    assert launcher.returncode == 0, output[-4000:]
    log = (run_dir / "training.log").read_text()
    assert "the launcher restarted this job after a failure (restart 1): continuing from the newest checkpoint" in log
    assert "(restart 2): continuing from the newest checkpoint" in log
    resumed = [line.split("resumed from ", 1)[1].split()[0] for line in log.splitlines() if "resumed from " in line]
    assert len(resumed) == 2, resumed
    assert Path(resumed[0]).name.startswith("emergency-"), "rank 0 survived the first kill and saved its step"
    kinds = json.loads((Path(resumed[1]) / "meta.json").read_text())["kinds"]
    assert "rolling" in kinds and "emergency" not in kinds, "rank 1 survived the second: the newest rolling checkpoint"
    assert f"finished: step {STEPS}" in log

    expected, got = read_scalars(uninterrupted, "Loss/Total"), read_scalars(run_dir, "Loss/Total")
    assert got == expected, "losses of the healed run differ from the uninterrupted run"
    a, b = final_weights(uninterrupted), final_weights(run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "final weights differ"
