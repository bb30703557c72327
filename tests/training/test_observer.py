"""The Observer keeps a run going when its own files cannot be written (a full disk): one error line per
file, the records are dropped, and writing resumes when space comes back (tests/e2e/test_faults.py fills a
real tmpfs; here the failures are injected so that recovery can be seen too)."""

from __future__ import annotations

import errno
import logging

import pytest

from vsrpp_dist.training import observer as observer_module
from vsrpp_dist.training.observer import STATUS_NAME, Observer


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def scalar_steps(run_dir, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = []
    for path in sorted((run_dir / "logs").glob("events.out.tfevents.*")):
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})
        events.Reload()
        if tag in events.Tags()["scalars"]:
            steps += [e.step for e in events.Scalars(tag)]
    return sorted(steps)


@pytest.fixture
def observer(tmp_path, monkeypatch):
    monkeypatch.setattr(observer_module, "TB_RETRY_SECONDS", 0.0)  # retry at the next write
    obs = Observer(tmp_path, rank=0, is_main=True, total_steps=10, progress_bar=False)
    yield obs
    obs.close()
    logging.getLogger("vsrpp_dist.rank0").handlers.clear()


def test_tensorboard_write_errors_are_reported_once_and_a_new_event_file_takes_over(observer, tmp_path,
                                                                                    monkeypatch):
    observer.scalars(1, {"Loss/Total": 1.0})
    observer.flush()
    monkeypatch.setattr(observer.writer, "add_scalar", disk_full)
    observer.scalars(2, {"Loss/Total": 2.0})  # fails: dropped, writer given up
    assert observer.writer is None
    monkeypatch.setattr(observer_module.Observer, "_open_tensorboard", disk_full)
    observer.scalars(3, {"Loss/Total": 3.0})  # reopening fails too: still one report
    monkeypatch.undo()
    observer.scalars(4, {"Loss/Total": 4.0})  # space is back: a new event file
    observer.flush()
    err = (tmp_path / "training.log").read_text()
    assert err.count("cannot write TensorBoard events") == 1 and "No space left on device" in err
    assert "TensorBoard events: written again" in err
    assert scalar_steps(tmp_path, "Loss/Total") == [1, 4]
    assert len(list((tmp_path / "logs").glob("events.out.tfevents.*"))) == 2


def test_status_file_errors_keep_the_old_file_and_recover(observer, tmp_path, monkeypatch):
    observer.status({"step": "1 / 10"})
    before = (tmp_path / STATUS_NAME).read_text()

    real_write_text = observer_module.Path.write_text

    def half_then_disk_full(self, text, *args, **kwargs):
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)
        disk_full()

    monkeypatch.setattr(observer_module.Path, "write_text", half_then_disk_full)
    observer.status({"step": "2 / 10"})
    observer.status({"step": "3 / 10"})
    monkeypatch.undo()
    assert (tmp_path / STATUS_NAME).read_text() == before, "the old status stays whole"
    assert not list(tmp_path.glob(f".{STATUS_NAME}.tmp-*")), "no temporary file left behind"
    observer.status({"step": "4 / 10"})
    assert "step  4 / 10" in (tmp_path / STATUS_NAME).read_text()
    err = (tmp_path / "training.log").read_text()
    assert err.count(f"cannot write {STATUS_NAME}") == 1 and f"{STATUS_NAME}: written again" in err
