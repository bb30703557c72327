"""The run directory (issue 23, items 8-10): one run per directory (a lock two real processes contend for),
symbolic links in checkpoints/ and as the run directory itself, `--fresh` where nothing can be moved,
`--resume key=value`, and what a start decides after the launcher restarted the job."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from vsrpp_dist import train as train_module
from vsrpp_dist.errors import StartError
from vsrpp_dist.training.checkpoint import LATEST_LINK, list_complete
from vsrpp_dist.training.run_dir import LOCK_NAME, RunLock, StartRequest, decide_start, move_aside

from ..helpers import ROOT, make_config, run, train

# A process that takes the run's lock as rank 0 does, forks a child that sleeps on (as a DataLoader
# worker does), and waits to be killed. The child says it runs (by then fork's handlers have run in it:
# until a child is first scheduled it holds the descriptor fork gave it).
HOLDER = """
import os, sys, time
from pathlib import Path
from vsrpp_dist.training.run_dir import RunLock
lock = RunLock.acquire(Path(sys.argv[1]))
if os.fork() == 0:
    print(os.getpid(), flush=True)
    time.sleep(600)
    os._exit(0)
time.sleep(600)
"""


def start_holder(run_dir: Path) -> tuple[subprocess.Popen, int]:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT)
    line = holder.stdout.readline()
    assert line.strip().isdigit(), f"the holder did not start: {holder.stderr.read() if holder.poll() else line}"
    return holder, int(line)


def test_a_second_start_is_refused_naming_the_holder_until_the_holder_dies(tmp_path):
    run_dir = tmp_path / "run"
    holder, worker = start_holder(run_dir)
    try:
        with pytest.raises(StartError) as err:
            RunLock.acquire(run_dir)
        message = str(err.value)
        assert f"run.dir={run_dir} is in use by pid {holder.pid} on host {socket.gethostname()} (started " in message
        assert "\n" not in message and "choose another run.dir" in message
        record = json.loads((run_dir / LOCK_NAME).read_text())
        assert record["pid"] == holder.pid
        holder.kill()  # kill -9: no clean-up code runs; the OS drops the lock
        holder.wait()
        assert Path(f"/proc/{worker}").exists(), "the forked child outlives its parent, as an orphaned worker may"
        lock = RunLock.acquire(run_dir)  # the child's inherited descriptor does not keep the run locked
        assert lock.held and json.loads((run_dir / LOCK_NAME).read_text())["pid"] == os.getpid()
        lock.release()
    finally:
        holder.kill()
        holder.wait()
        try:
            os.kill(worker, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_the_lock_is_released_at_the_end_of_a_run_and_its_file_stays(tmp_path):
    run_dir = tmp_path / "run"
    lock = RunLock.acquire(run_dir)
    with pytest.raises(StartError, match=f"pid {os.getpid()} "):
        RunLock.acquire(run_dir)  # another open of the same file, even in this process, is a second start
    lock.release()
    again = RunLock.acquire(run_dir)
    assert (run_dir / LOCK_NAME).is_file()
    again.release()


def test_an_unwritable_place_for_the_lock_is_one_line(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(StartError, match=rf"^run.dir={a_file}/run: not writable \("):
        RunLock.acquire(a_file / "run")


def test_a_restarted_job_continues_whatever_the_first_attempt_asked(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "rolling-00000010").mkdir(parents=True)
    for request in (StartRequest(fresh=True), StartRequest(), StartRequest(resume="/elsewhere/emergency-00000003")):
        decision = decide_start(run_dir, StartRequest(**{**request.__dict__, "restart": 1}), num_processes=2,
                                interactive=False)
        assert (decision.mode, decision.resume_from) == ("resume", "latest"), request
    empty = tmp_path / "empty"
    assert decide_start(empty, StartRequest(fresh=True, restart=2), num_processes=2).mode == "new"
    started_from = decide_start(empty, StartRequest(resume="/elsewhere/emergency-00000003", restart=1),
                                num_processes=2)
    assert (started_from.mode, started_from.resume_from) == ("resume", "/elsewhere/emergency-00000003")


def test_resume_followed_by_an_override_resumes_the_newest_checkpoint():
    args = train_module.parse_args(["--config", "c.yaml", "--resume", "train.total_steps=16", "data.num_workers=0"])
    assert args.resume == "latest" and args.overrides == ["train.total_steps=16", "data.num_workers=0"]
    args = train_module.parse_args(["--resume", "runs/a=b/checkpoint_latest", "train.total_steps=16"])
    assert args.resume == "runs/a=b/checkpoint_latest" and args.overrides == ["train.total_steps=16"]
    assert train_module.parse_args(["--resume"]).resume == "latest"


def test_help_says_how_resume_reads_an_override(capsys):
    with pytest.raises(SystemExit):
        train_module.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "key.sub=value after --resume is an override" in text


# ----------------------------------------------------------------------------------------------------
# Through the trainer and the command line (one process, in this one)

SHORT = ("validation.every=0", "checkpoint.rolling_every=2", "checkpoint.rolling_keep=1", "checkpoint.regular_every=0")


def test_resume_with_an_override_continues_the_run(train_shards, val_shards, tmp_path, capsys):
    run_dir = tmp_path / "run"
    common = ["--config", ROOT / "configs" / "tiny.yaml", f"run.dir={run_dir}", f"data.train_shards={train_shards}",
              f"data.val_shards={val_shards}", *SHORT]
    assert run(capsys, train_module, *common, "train.total_steps=2")[0] == 0
    code, _, err = run(capsys, train_module, *common[:2], "--resume", "train.total_steps=4", *common[2:])
    assert code == 0, err
    log = (run_dir / "training.log").read_text()
    assert f"resumed from {run_dir}/checkpoints/final-00000002 at step 2" in log and "finished: step 4" in log


def test_symlinks_in_checkpoints_are_never_pruned_nor_resumed_and_saves_go_on(train_shards, val_shards, tmp_path):
    """A link to another run's checkpoint (and a dangling one under a name this run will write): every save
    of the run used to crash in pruning (`Cannot call rmtree on a symbolic link`)."""
    other = tmp_path / "other"
    train(make_config(other, train_shards, val_shards, "train.total_steps=2", *SHORT))
    foreign = other / "checkpoints" / "final-00000002"
    untouched = {p.name: p.stat().st_size for p in foreign.iterdir()}
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "rolling-00000001").symlink_to(foreign)
    (run_dir / "checkpoints" / "rolling-00000004").symlink_to(tmp_path / "nowhere")
    (run_dir / "checkpoints" / ".tmp-rolling-00000002").symlink_to(foreign)  # a save of step 2 writes through it
    _, code = train(make_config(run_dir, train_shards, val_shards, "train.total_steps=6", *SHORT))
    assert code == 0
    log = (run_dir / "training.log").read_text()
    assert ("symbolic links are not checkpoints of this run and are ignored (never removed, never resumed from "
            "without --resume PATH): .tmp-rolling-00000002, rolling-00000001, rolling-00000004") in log
    assert "incomplete checkpoint folders" not in log
    assert "finished: step 6" in log and "could not" not in log
    assert (run_dir / "checkpoints" / "rolling-00000001").is_symlink() and (foreign / "meta.json").is_file()
    assert (run_dir / "checkpoints" / "rolling-00000004").is_symlink()  # not replaced by this run's step 4
    assert "checkpoint saved: checkpoints/rolling-00000004-2 (rolling)" in log
    assert "checkpoint saved: checkpoints/rolling-00000002-2 (rolling)" in log
    assert {p.name: p.stat().st_size for p in foreign.iterdir()} == untouched, "the other run's checkpoint as it was"
    assert sorted(i.path.name for i in list_complete(run_dir)) == ["final-00000006"]
    _, code = train(make_config(run_dir, train_shards, val_shards, "train.total_steps=8", *SHORT),
                    StartRequest(resume="latest"))
    assert code == 0
    assert f"resumed from {run_dir}/checkpoints/final-00000006 at step 6" in (run_dir / "training.log").read_text()


def test_a_crash_checkpoint_beside_a_symlink_is_reported_as_written(train_shards, val_shards, tmp_path):
    """The emergency checkpoint after a crash was written, then pruning hit the link and the run said
    `emergency checkpoint failed`."""
    other = tmp_path / "other"
    train(make_config(other, train_shards, val_shards, "train.total_steps=2", *SHORT))
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "rolling-00000001").symlink_to(other / "checkpoints" / "final-00000002")

    def crash_at_step_4(trainer):
        step = trainer.train_step

        def patched(batches):
            if trainer.state.step == 3:  # a step trained since the rolling checkpoint at 2: something to save
                raise RuntimeError("injected crash in step 4")
            return step(batches)

        trainer.train_step = patched

    with pytest.raises(RuntimeError, match="injected crash"):
        train(make_config(run_dir, train_shards, val_shards, "train.total_steps=8", *SHORT), patch=crash_at_step_4)
    log = (run_dir / "training.log").read_text()
    assert f"emergency checkpoint written: {run_dir}/checkpoints/emergency-00000003" in log
    assert "emergency checkpoint failed" not in log
    assert (run_dir / LATEST_LINK).resolve().name == "emergency-00000003"


def test_fresh_on_a_symlinked_run_directory_moves_the_run_not_the_link(train_shards, val_shards, tmp_path):
    real = tmp_path / "scratch" / "run"
    link = tmp_path / "home" / "run"
    link.parent.mkdir()
    real.mkdir(parents=True)
    link.symlink_to(real)
    train(make_config(link, train_shards, val_shards, "train.total_steps=2", *SHORT))
    trainer, code = train(make_config(link, train_shards, val_shards, "train.total_steps=2", *SHORT),
                          StartRequest(fresh=True))
    assert code == 0
    assert link.is_symlink() and link.resolve() == real, "the link still points where the user put the run"
    moved = [p for p in real.parent.iterdir() if p.name.startswith("run.bak-")]
    assert len(moved) == 1 and (moved[0] / "checkpoints" / "final-00000002" / "meta.json").is_file()
    assert f"(fresh, old run moved to {moved[0]})" in (real / "training.log").read_text()
    assert (real / "checkpoints" / "final-00000002").is_dir() and (real / "training.log").read_text().count(
        "vsrpp-dist ") == 1, "the new run starts in the real folder with a log of its own"


@pytest.fixture
def read_only(tmp_path):
    """A folder that cannot be written: a read-only remounted tmpfs for root (whom permissions do not
    stop), a mode-555 folder for anyone else. Yields a function that makes `path` read-only after its
    contents were written by `fill(path)`."""
    mounted: list[Path] = []

    def make(fill) -> Path:
        point = tmp_path / "ro"
        point.mkdir()
        if os.geteuid() == 0:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(point)], capture_output=True)
            if done.returncode != 0:
                pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
            mounted.append(point)
            fill(point)
            subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True, capture_output=True)
        else:
            fill(point)
            for folder in sorted((p for p in point.rglob("*") if p.is_dir()), reverse=True):
                folder.chmod(0o555)
            point.chmod(0o555)
        return point

    yield make
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)
    for folder in tmp_path.rglob("*"):
        if folder.is_dir() and not folder.is_symlink():
            folder.chmod(0o755)


def _a_run(point: Path) -> None:
    (point / "run" / "checkpoints" / "rolling-00000004").mkdir(parents=True)
    (point / "run" / "checkpoints" / "rolling-00000004" / "meta.json").write_text("{}")


def test_fresh_on_a_read_only_run_directory_is_one_line_and_moves_nothing(read_only, train_shards, val_shards,
                                                                          capsys):
    point = read_only(_a_run)
    run_dir = point / "run"
    code, _, err = run(capsys, train_module, "--config", ROOT / "configs" / "tiny.yaml", f"run.dir={run_dir}",
                       f"data.train_shards={train_shards}", f"data.val_shards={val_shards}", "--fresh")
    assert code == 2 and "Traceback" not in err
    assert err.splitlines() == [err.strip()] and err.startswith(f"train: error: run.dir={run_dir}: not writable ("), err
    assert sorted(p.name for p in point.iterdir()) == ["run"]
    with pytest.raises(StartError, match=rf"^--fresh: cannot move {run_dir} aside to run.bak-.*; nothing was moved$"):
        move_aside(run_dir)
    assert (run_dir / "checkpoints" / "rolling-00000004" / "meta.json").is_file()
