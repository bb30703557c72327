"""Shards read from real servers on 127.0.0.1: http.server in a thread, moto's S3-compatible server via
s3fs, and a pipe: command. Training from each equals training from the local folder; faults (a cut
connection, a shard that keeps failing, a server that stops answering or goes away, 403/404) are
retried, skipped and counted, or stop the start with one masked line."""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch

from vsrpp_dist.config import ConfigError, load_config
from vsrpp_dist.data.locations import Location, LocationError, ReadAhead, RemoteReadError, RetryPolicy, mask
from vsrpp_dist.data.stream import build_train_loader
from vsrpp_dist.tools.loopback import QuietFileHandler, S3Server, http_folder, s3_environment, upload_folder
from vsrpp_dist.training.run_dir import StartRequest
from vsrpp_dist.training.trainer import Trainer

from ..helpers import TINY, make_config, read_scalars, sigterm_after_step, train

# One worker: the remote reads then run in a forked DataLoader worker, as in real training.
RUN = ("train.total_steps=4", "validation.every=4", "train.log_every=1", "data.num_workers=1",
       "checkpoint.rolling_every=0", "checkpoint.regular_every=0")
FAST_FAULTS = ("data.remote_retries=2", "data.remote_backoff_s=0.01", "data.remote_timeout_s=1")


def start(cfg) -> None:
    """The real start-up, as far as its data checks (they come before the run directory is touched)."""
    try:
        Trainer(cfg, interactive=False)
    finally:
        assert not os.path.exists(cfg.run.dir), "a data problem must not leave a run directory"


class FaultyHandler(QuietFileHandler):
    """Serves files, except that the server's `plan` may say, per file name, what each next GET does:
    ("cut", n) sends the headers and n bytes, then drops the connection (what a killed server looks like
    to its client); ("status", code) answers with that code; ("stall", n) sends n bytes, then nothing."""

    def do_HEAD(self) -> None:  # noqa: N802 (the standard library's name)
        name = self.path.split("?")[0].lstrip("/")
        self.server.requests.append("HEAD " + name)
        actions = self.server.plan.get(name)
        if actions and actions[0][0] == "status":  # a refusal answers HEAD too; data faults need a GET
            self.send_error(actions.pop(0)[1])
            return
        super().do_HEAD()

    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        name = self.path.split("?")[0].lstrip("/")
        self.server.requests.append(name)
        actions = self.server.plan.get(name)
        if not actions:
            return super().do_GET()
        kind, arg = actions.pop(0)
        if kind == "status":
            self.send_error(arg)
            return
        data = (Path(self.directory) / name).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[:arg])
        self.wfile.flush()
        if kind == "stall":
            self.server.release.wait(30)
        self.close_connection = True
        self.connection.close()


@pytest.fixture(scope="module")
def served(train_shards, val_shards, tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    (root / "train").symlink_to(train_shards)
    (root / "val").symlink_to(val_shards)
    with http_folder(root, FaultyHandler) as (url, server):
        server.plan, server.requests, server.release = {}, [], threading.Event()
        yield url, server
        server.release.set()


@pytest.fixture
def http(served):
    url, server = served
    server.plan.clear()
    server.requests.clear()
    server.release.clear()
    yield url, server
    server.release.set()


@pytest.fixture(scope="module")
def s3(train_shards, val_shards):
    pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    server = S3Server()
    with s3_environment(server.env):
        upload_folder(train_shards, "s3://shards/train")
        upload_folder(val_shards, "s3://shards/val")
        yield server
    server.kill()


@pytest.fixture(scope="module")
def local_run(train_shards, val_shards, tmp_path_factory):
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    run_dir = tmp_path_factory.mktemp("local") / "run"
    trainer, code = train(make_config(run_dir, train_shards, val_shards, *RUN))
    assert code == 0
    return run_dir, weights_of(trainer)


def weights_of(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()}


def assert_same_run(run_dir: Path, weights: dict, reference) -> None:
    ref_dir, ref_weights = reference
    for tag in ("Loss/Total", "Loss/L1", "Metrics/KI_PSNR"):
        assert read_scalars(run_dir, tag) == read_scalars(ref_dir, tag), tag
    assert all(torch.equal(weights[k], ref_weights[k]) for k in ref_weights), "final weights differ"


def locations(kind: str, http_url: str, train_shards: Path, val_shards: Path) -> tuple[str, str]:
    if kind == "http":
        return f"{http_url}/train", f"{http_url}/val"
    if kind == "s3":
        return "s3://shards/train", "s3://shards/val"
    return f"pipe:cat {train_shards}/{{name}}", f"pipe:cat {val_shards}/{{name}}"


@pytest.mark.parametrize("kind", ["http", "s3", "pipe"])
def test_training_from_a_remote_location_equals_the_local_run(kind, request, http, train_shards, val_shards,
                                                               local_run, tmp_path):
    if kind == "s3":
        request.getfixturevalue("s3")
    train_url, val_url = locations(kind, http[0], train_shards, val_shards)
    run_dir = tmp_path / "run"
    trainer, code = train(make_config(run_dir, train_url, val_url, *RUN))
    assert code == 0
    assert_same_run(run_dir, weights_of(trainer), local_run)
    assert load_config(run_dir / "config.yaml").data.train_shards == train_url
    if kind == "http":
        served = set(http[1].requests)
        assert "train/manifest.json" in served and "val/manifest.json" in served
        assert any(name.startswith("train/train-") for name in served)


def test_resume_from_http_is_exact(http, train_shards, val_shards, local_run, tmp_path):
    """Stopped by SIGTERM after step 2 of 4, resumed: the same losses and weights as the local run."""
    train_url, val_url = locations("http", http[0], train_shards, val_shards)
    run_dir = tmp_path / "run"

    _, code = train(make_config(run_dir, train_url, val_url, *RUN), patch=sigterm_after_step(2))
    assert code == 128 + signal.SIGTERM
    resumed, code = train(make_config(run_dir, train_url, val_url, *RUN), StartRequest(resume="latest"))
    assert code == 0 and resumed.state.step == 4
    assert_same_run(run_dir, weights_of(resumed), local_run)


# -- faults ------------------------------------------------------------------------------------------


def data_cfg(*overrides):
    return load_config(TINY, list(overrides)).data


def batches(location, n, *overrides):
    loader = build_train_loader(location, data_cfg(*overrides), seed=0, rank=0, world_size=1, batch_size=2)
    return list(itertools.islice(loader, n))


def shard_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.tar"))


def test_a_connection_cut_mid_shard_is_retried_and_the_batches_do_not_change(http, train_shards):
    url, server = http
    first, second = shard_names(train_shards)[:2]
    server.plan[f"train/{first}"] = [("cut", 3000)]
    server.plan[f"train/{second}"] = [("cut", 0), ("status", 503)]
    local = batches(train_shards, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a retried fault that succeeds is no warning
        remote = batches(f"{url}/train", 10, *FAST_FAULTS)
    assert all(torch.equal(a["gt"], b["gt"]) for a, b in zip(local, remote))
    assert sum(b["skipped"][1] for b in remote) == 0
    assert server.requests.count(f"train/{first}") >= 2 and server.requests.count(f"train/{second}") >= 3


def test_a_shard_that_keeps_failing_is_skipped_counted_and_warned_once(http, train_shards, val_shards, tmp_path):
    """A server that drops one shard's every connection: 1 + 2 retries, then the shard is skipped and
    counted; the run goes on to its last step and logs Data/Bad_Shards."""
    url, server = http
    name = shard_names(train_shards)[0]
    server.plan[f"train/{name}"] = [("cut", 1000)] * 3
    run_dir = tmp_path / "run"
    # In the training process: a forked worker inherits pytest's warning recorder, not the run's log.
    # The warning reaches the log, or the recorder when an earlier run in this process took over
    # Python's warnings for logging first (logging.captureWarnings does that once per process).
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        trainer, code = train(make_config(run_dir, f"{url}/train", "", *RUN, "validation.every=0",
                                          "data.num_workers=0", *FAST_FAULTS))
    assert code == 0 and trainer.state.step == 4
    seen = [str(w.message) for w in recorded] + (run_dir / "training.log").read_text().splitlines()
    about = [line for line in seen if name in line]
    assert len(about) == 1, about  # warned once
    assert "after 3 attempts" in about[0] and "skipping" in about[0]
    assert server.requests.count(f"train/{name}") == 3
    assert max(read_scalars(run_dir, "Data/Bad_Shards").values()) >= 1


def test_a_server_that_stops_answering_times_out_and_the_read_goes_on(http, train_shards):
    url, server = http
    name = shard_names(train_shards)[1]
    server.plan[f"train/{name}"] = [("stall", 2000)]  # then 30 s of silence, unless released
    local = batches(train_shards, 10)
    started = time.monotonic()
    remote = batches(f"{url}/train", 10, "data.remote_timeout_s=0.5", "data.remote_backoff_s=0.01")
    assert time.monotonic() - started < 15
    assert all(torch.equal(a["gt"], b["gt"]) for a, b in zip(local, remote))
    assert server.requests.count(f"train/{name}") >= 2


def test_an_s3_server_killed_mid_epoch_costs_skipped_shards_and_the_stream_goes_on(s3, train_shards, monkeypatch):
    """kill -9 of the store mid-epoch: the next shard's reads fail (retried, then it is skipped, counted
    and warned); a new server with the same data comes up on the same port; the stream goes on."""
    from vsrpp_dist.data.stream import ShardReader

    loader = build_train_loader("s3://shards/train", data_cfg("data.remote_retries=2", "data.remote_backoff_s=0.05",
                                                              "data.remote_timeout_s=2"),
                                seed=0, rank=0, world_size=1, batch_size=2)
    stream = iter(loader)
    got = [next(stream) for _ in range(2)]  # the tiny epoch is all in the shuffle buffer now
    s3.kill()
    warned = []
    real_warn = ShardReader._warn

    def warn_then_restart(reader, key, message):
        warned.append(message)
        real_warn(reader, key, message)
        if len(warned) == 1:  # the store comes back after the first skipped shard
            s3.start()
            upload_folder(train_shards, "s3://shards/train")

    monkeypatch.setattr(ShardReader, "_warn", warn_then_restart)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        got += [next(stream) for _ in range(14)]
    assert len(warned) == 1 and "after 3 attempts; skipping it" in warned[0], warned
    assert "s3://shards/train/train-" in warned[0] and "Could not connect" in warned[0]
    assert all(b["gt"].shape == (2, 5, 3, 48, 48) for b in got)
    assert sum(b["skipped"][1] for b in got) == 1


def test_403_404_and_a_missing_manifest_stop_the_start_in_one_line(http, val_shards, tmp_path):
    url, server = http
    server.plan["train/manifest.json"] = [("status", 403)] * 2  # HEAD, then fsspec tries GET
    with pytest.raises(ConfigError) as caught:
        start(make_config(tmp_path / "run", f"{url}/train", ""))
    assert str(caught.value) == f"data.train_shards: {url}/train/manifest.json: HTTP 403 Forbidden"
    asked = [r for r in server.requests if r.endswith("train/manifest.json")]
    assert len(asked) == 2, f"a 403 is not retried: {asked}"
    with pytest.raises(ConfigError, match=r"nowhere/manifest.json: HTTP 404 File not found \(no shard manifest here"):
        start(make_config(tmp_path / "run", f"{url}/nowhere", ""))
    server.plan["val/" + shard_names(val_shards)[0]] = [("status", 404)] * 2
    with pytest.raises(ConfigError, match="^data.val_shards: .*validation shard val-000000.tar is missing$"):
        start(make_config(tmp_path / "run", f"{url}/train", f"{url}/val"))
    server.plan["train/manifest.json"] = [("status", 503)] * 6
    with pytest.raises(ConfigError, match="manifest.json: HTTP 503 Service Unavailable after 3 attempts$"):
        start(make_config(tmp_path / "run", f"{url}/train", "", *FAST_FAULTS))


def test_s3_missing_bucket_or_manifest_stops_the_start_in_one_line(s3, tmp_path):
    for where in ("s3://no-such-bucket/train", "s3://shards/empty"):
        with pytest.raises(ConfigError) as caught:
            start(make_config(tmp_path / "run", where, ""))
        assert str(caught.value).startswith(f"data.train_shards: {where}/manifest.json: not found (404)")
        assert "\n" not in str(caught.value)


def test_credentials_never_reach_a_message(train_shards, tmp_path):
    with pytest.raises(LocationError) as caught:
        Location("https://alice:hunter2@example.org/shards")
    assert "hunter2" not in str(caught.value) and "credentials" in str(caught.value)
    with pytest.raises(LocationError) as caught:
        Location("https://example.org/shards?token=hunter2")
    assert "hunter2" not in str(caught.value)
    location = Location(f"pipe:MY_TOKEN=hunter2 cat {tmp_path}/missing/{{name}}", RetryPolicy(retries=0))
    with pytest.raises(RemoteReadError) as caught:
        location.read_bytes("manifest.json")
    assert "hunter2" not in str(caught.value) and "MY_TOKEN=***" in str(caught.value)
    assert mask("s3 https://u:p@h/x?X-Amz-Signature=abc&a=1 AWS_SECRET_ACCESS_KEY=xyz") == \
        "s3 https://***@h/x?X-Amz-Signature=***&a=*** AWS_SECRET_ACCESS_KEY=***"


def test_locations_that_cannot_work_are_refused_in_one_line():
    with pytest.raises(LocationError, match=r"unknown kind of location ftp://"):
        Location("ftp://host/shards")
    with pytest.raises(LocationError, match=r"\{name\} where the file name goes"):
        Location("pipe:aws s3 cp s3://bucket/x -")
    with pytest.raises(LocationError, match="no bucket named"):
        Location("s3:///prefix")
    import importlib.util

    if importlib.util.find_spec("gcsfs") is None:
        with pytest.raises(LocationError, match=r"^gs://b/p: reading gs:// needs the gcsfs package "
                                                r"\(pip install 'vsrpp-dist\[gcs\]'\)$"):
            Location("gs://b/p")


def test_remote_settings_are_validated_naming_the_key():
    with pytest.raises(ConfigError, match=r"^data.remote_timeout_s: 0.0 is below the minimum 0.1$"):
        load_config(TINY, ["data.remote_timeout_s=0"])
    with pytest.raises(ConfigError, match=r"^data.remote_retries: -1 is below the minimum 0$"):
        load_config(TINY, ["data.remote_retries=-1"])
    with pytest.raises(ConfigError, match=r"^data.read_ahead_mb: expected an integer"):
        load_config(TINY, ["data.read_ahead_mb=lots"])


def test_read_ahead_holds_at_most_its_byte_limit_and_keeps_the_order():
    produced = []
    block = 1 << 16

    def blocks():
        for i in range(40):
            produced.append(i)
            yield bytes([i]) * block

    ahead = ReadAhead(blocks(), 4 * block, longest_wait_s=10, label="test")
    time.sleep(0.3)  # the thread fills the buffer, then waits
    assert 4 <= len(produced) <= 6, "read ahead, but no further than the limit (plus the block in hand)"
    out = list(ahead)
    assert [b[0] for b in out] == list(range(40)) and all(len(b) == block for b in out)


def test_pipe_command_that_writes_nothing_times_out(tmp_path):
    location = Location("pipe:sleep 20; cat {name}", RetryPolicy(retries=0, timeout_s=0.3))
    started = time.monotonic()
    with pytest.raises(RemoteReadError, match="wrote nothing for 0.3 s"):
        location.read_bytes("manifest.json")
    assert time.monotonic() - started < 5


def test_validation_set_streams_from_http_like_the_local_one(http, val_shards):
    from vsrpp_dist.data.validation_set import ValidationSet

    local = list(ValidationSet(val_shards))
    remote = list(ValidationSet(f"{http[0]}/val"))
    assert [s.name for s in local] == [s.name for s in remote]
    assert all(torch.equal(a.gt, b.gt) for a, b in zip(local, remote))


def test_a_server_that_is_down_at_the_start_is_retried_then_named(tmp_path):
    from vsrpp_dist.tools.loopback import free_port

    url = f"http://127.0.0.1:{free_port()}/train"
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        start(make_config(tmp_path / "run", url, "", *FAST_FAULTS))
    message = str(caught.value)
    assert message.startswith(f"data.train_shards: {url}/manifest.json: ") and "after 3 attempts" in message
    assert "404" not in message and "\n" not in message
    assert time.monotonic() - started < 10


def test_evaluate_reads_a_packed_validation_set_from_http(http, val_shards, tmp_path, capsys):
    from vsrpp_dist.inference import evaluate
    from vsrpp_dist.weights import WEIGHTS_FILE

    from ..helpers import run, save_weights

    weights = save_weights(tmp_path / WEIGHTS_FILE, seed=1)
    reports = {}
    for name, data in (("local", val_shards), ("http", f"{http[0]}/val")):
        rc, _, err = run(capsys, evaluate, "--checkpoint", weights, "--data", data, "--json", tmp_path / name,
                         "--quiet")
        assert rc == 0, err
        reports[name] = json.loads((tmp_path / name).read_text())
    assert reports["http"]["data"] == f"{http[0]}/val" and reports["local"]["data"] == str(val_shards)
    assert reports["http"]["rows"] == reports["local"]["rows"] and len(reports["local"]["rows"]) == 3
    rc, _, err = run(capsys, evaluate, "--checkpoint", weights, "--data", f"{http[0]}/absent", "--quiet")
    assert rc == 2 and "absent/manifest.json: HTTP 404" in err and len(err.strip().splitlines()) == 1


@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
def test_bench_loader_remote_measures_http_and_s3_beside_local_in_one_run(tmp_path, capsys):
    pytest.importorskip("moto.server")
    from vsrpp_dist.tools import bench
    from vsrpp_dist.tools.demo_data import write_frame_folders

    frames = tmp_path / "frames"
    write_frame_folders(frames, sequences=1, frames=12, frame_hw=(216, 288), seed=3)
    out = tmp_path / "bench.json"
    assert bench.main(["loader", "--frames", str(frames), "--work", str(tmp_path / "work"), "--remote",
                       "--json", str(out), "--min-tile", "96", "--lr-patch", "16", "--batch-size", "4",
                       "--clips", "12", "--warmup-clips", "4", "--repeats", "2"]) == 0
    remote = json.loads(out.read_text())["remote"]
    assert sorted(remote) == ["http", "http, no read-ahead", "s3"]
    for summary in remote.values():
        assert summary["median_clips_per_s"] > 0 and summary["vs_local"] > 0
        assert len(summary["per_round_vs_local"]) == 2
    printed = capsys.readouterr().out
    assert "ours, s3" in printed and "x local" in printed


def test_fewer_shards_than_streams_warns_what_it_costs(train_shards):
    """Warned by rank 0's first worker when it starts reading (once per run, wherever the stream was built)."""
    from vsrpp_dist.data.degradation import BicubicDegradation
    from vsrpp_dist.data.stream import ClipStream, TrainingShards

    def stream(rank, world_size):
        return ClipStream(TrainingShards(train_shards, data_cfg(), world_size=world_size), seed=0, rank=rank,
                          batch_size=1, degradation=BicubicDegradation())

    few = stream(0, 8)
    with pytest.warns(RuntimeWarning, match=r"5 shards for 8 ranks x 1 workers = 8 streams: each shard is read by "
                                            r"2 streams, each keeping 1 sample in 2 .* at least 8 shards"):
        next(iter(few))
    enough = stream(0, 4)
    other_rank = stream(1, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        next(iter(enough))
        next(iter(other_rank))
