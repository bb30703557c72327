"""Experiment trackers through Accelerate (issue 26), against the real libraries, offline: MLflow in a local
file store and W&B in offline mode, each read back with the library's own reader and compared with
TensorBoard's event files value for value; resume continues the same MLflow run; an unreachable or raising
tracker costs one line and nothing else; a tracker that is not installed is refused before anything is made.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vsrpp_dist import train as train_module
from vsrpp_dist.config import ConfigError, load_config
from vsrpp_dist.training.run_dir import StartRequest
from vsrpp_dist.training.trackers import IDS_NAME, tracker_params

from ..helpers import TINY, free_port, launch_command, launcher_env, make_config, run, train

mlflow = pytest.importorskip("mlflow")
TRACKER_FAILED = "tracker mlflow failed"


@pytest.fixture(autouse=True)
def tracker_environment(tmp_path, monkeypatch):
    """No tracker setting from the machine leaks in, nothing is written outside tmp_path, and the
    environment the code may set (MLflow's file-store switch) is restored afterwards."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "MLFLOW_TAGS", "WANDB_MODE",
                 "WANDB_API_KEY", "WANDB_ENTITY", "WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "")  # recorded, so that undo removes what the run sets
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield
    if mlflow.active_run() is not None:  # a failed test must not leave its run open for the next one
        mlflow.end_run()


def tensorboard_scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """Every scalar tag in RUN/logs: {tag: {step: value}} over all event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, dict[int, float]] = {}
    for path in sorted((run_dir / "logs").glob("events.out.tfevents.*")):
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            out.setdefault(tag, {}).update({e.step: e.value for e in events.Scalars(tag)})
    return out


def same_as_tensorboard(value: float, tensorboard_value: float) -> bool:
    """TensorBoard stores float32; the trackers keep the float64 they were given."""
    if math.isnan(tensorboard_value):
        return math.isnan(value)
    return float(np.float32(value)) == tensorboard_value


def assert_same_curves(tracker: dict[str, dict[int, float]], tensorboard: dict[str, dict[int, float]]) -> None:
    assert set(tracker) == set(tensorboard)
    for tag, values in tensorboard.items():
        assert tracker[tag].keys() == values.keys(), tag
        wrong = {s: (tracker[tag][s], v) for s, v in values.items() if not same_as_tensorboard(tracker[tag][s], v)}
        assert not wrong, f"{tag}: {wrong}"


def mlflow_curves(uri: str, run_id: str) -> dict[str, dict[int, float]]:
    client = mlflow.MlflowClient(uri)
    return {tag: {m.step: m.value for m in client.get_metric_history(run_id, tag)}
            for tag in client.get_run(run_id).data.metrics}


def saved_ids(run_dir: Path) -> dict[str, str]:
    return json.loads((run_dir / IDS_NAME).read_text())


def failure_lines(run_dir: Path) -> list[str]:
    return [line for line in (run_dir / "training.log").read_text().splitlines() if TRACKER_FAILED in line]


def test_mlflow_gets_every_tensorboard_scalar_at_the_same_step_and_the_masked_config(train_shards, val_shards,
                                                                                     tmp_path):
    run_dir = tmp_path / "run"
    # no tracking URI anywhere: the run's own file store, RUN/mlruns
    _, code = train(make_config(run_dir, train_shards, val_shards, "log.trackers=[tensorboard,mlflow]",
                                "log.project=vsr-tests", "data.remote_timeout_s=7"))
    assert code == 0
    uri = (run_dir / "mlruns").as_uri()
    run_id = saved_ids(run_dir)["mlflow"]
    tensorboard = tensorboard_scalars(run_dir)
    assert {"Loss/Total", "Metrics/KI_PSNR", "Events/Checkpoints", "System/Speed_s_per_iter"} <= set(tensorboard)
    assert_same_curves(mlflow_curves(uri, run_id), tensorboard)

    run = mlflow.MlflowClient(uri).get_run(run_id)
    assert run.info.run_name == "run" and run.data.tags["vsrpp.run_dir"] == str(run_dir)
    assert mlflow.MlflowClient(uri).get_experiment(run.info.experiment_id).name == "vsr-tests"
    params = run.data.params
    assert params["model.channels"] == "8" and params["data.remote_timeout_s"] == "7.0"
    assert params["run.dir"] == str(run_dir) and params["log.trackers"] == "[tensorboard, mlflow]"
    assert len(params) == len(tracker_params(load_config(TINY)))  # the whole resolved config
    assert not failure_lines(run_dir)


def test_resume_continues_the_same_mlflow_run(train_shards, val_shards, tmp_path):
    run_dir, uri = tmp_path / "run", (tmp_path / "mlruns").as_uri()
    trackers = ["log.trackers=[tensorboard,mlflow]", f"log.mlflow_tracking_uri={uri}"]
    _, code = train(make_config(run_dir, train_shards, val_shards, *trackers, "train.total_steps=4"))
    assert code == 0
    first_id = saved_ids(run_dir)["mlflow"]
    _, code = train(make_config(run_dir, train_shards, val_shards, *trackers, "train.total_steps=8"),
                    StartRequest(resume="latest"))
    assert code == 0

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("vsrpp-dist")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [first_id] == [saved_ids(run_dir)["mlflow"]], "one run, not two"
    tensorboard = tensorboard_scalars(run_dir)
    assert sorted(tensorboard["Loss/Total"]) == [1, 2, 4, 6, 8]  # the resumed half is in the same curves
    assert_same_curves(mlflow_curves(uri, first_id), tensorboard)
    # a parameter changed on resume keeps MLflow's first value, and the log says so once
    assert runs[0].data.params["train.total_steps"] == "4"
    log = (run_dir / "training.log").read_text()
    assert f"tracker mlflow: run {first_id} started at {uri}" in log
    assert f"tracker mlflow: run {first_id} continued at {uri}" in log
    assert log.count("mlflow: parameters are fixed once logged; the run keeps the first values of "
                     "train.total_steps") == 1
    assert not failure_lines(run_dir)


def wandb_records(wandb_file: Path) -> list[dict]:
    """The records of a .wandb transaction log, read by wandb's own reader (`wandb leet inspect --json`)."""
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(wandb_file)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_wandb_offline_run_holds_the_tensorboard_curves_images_and_the_config(train_shards, val_shards, tmp_path):
    run_dir = tmp_path / "run"
    cfg = make_config(run_dir, train_shards, val_shards, "log.trackers=[tensorboard,wandb]", "log.wandb_offline=true",
                      "log.run_name=tiny-wandb")
    _, code = train(cfg)
    assert code == 0
    [wandb_file] = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    records = wandb_records(wandb_file)

    [run] = [r["run"] for r in records if r["type"] == "run"]
    assert run["run_id"] == saved_ids(run_dir)["wandb"] and run["display_name"] == "tiny-wandb"
    assert run["project"] == "vsrpp-dist"
    config = {}
    for record in records:
        if record["type"] == "config":
            config.update(record["config"]["update"])
    assert config["model.channels"] == 8 and config["run.dir"] == str(run_dir)
    assert {k: v for k, v in config.items() if k != "_wandb"} == tracker_params(cfg)  # the whole config, masked

    rows = {r["history"]["step"]["num"]: r["history"]["item"] for r in records if r["type"] == "history"}
    tensorboard = tensorboard_scalars(run_dir)
    curves = {tag: {step: row[tag] for step, row in rows.items() if tag in row} for tag in tensorboard}
    assert_same_curves(curves, tensorboard)
    # the validation comparison images, as files W&B will upload
    images = [(step, key[: -len(".filenames")], row[key]) for step, row in rows.items() for key in row
              if key.startswith("Validation/") and key.endswith(".filenames")]
    assert {step for step, _, _ in images} == {4, 8}
    for _, _, files in images:
        assert all((wandb_file.parent / "files" / name).is_file() for name in files)


def test_resume_continues_the_same_wandb_run(train_shards, val_shards, tmp_path):
    run_dir = tmp_path / "run"
    trackers = ["log.trackers=[tensorboard,wandb]", "log.wandb_offline=true"]
    _, code = train(make_config(run_dir, train_shards, val_shards, *trackers, "train.total_steps=4"))
    assert code == 0
    run_id = saved_ids(run_dir)["wandb"]
    _, code = train(make_config(run_dir, train_shards, val_shards, *trackers, "train.total_steps=8"),
                    StartRequest(resume="latest"))
    assert code == 0
    first, second = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))  # `wandb sync` joins them
    runs = [[r["run"] for r in wandb_records(f) if r["type"] == "run"][0] for f in (first, second)]
    assert [r["run_id"] for r in runs] == [run_id, run_id] and runs[1].get("resume") is True
    steps = [sorted(r["history"]["step"]["num"] for r in wandb_records(f) if r["type"] == "history")
             for f in (first, second)]
    assert steps == [[1, 2, 4], [6, 8]]


def test_unreachable_mlflow_costs_one_line_and_nothing_else(train_shards, val_shards, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    # nothing listens there; credentials in the environment's URI never reach the log
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:s3cret@127.0.0.1:{free_port()}")
    run_dir = tmp_path / "run"
    _, code = train(make_config(run_dir, train_shards, val_shards, "log.trackers=[tensorboard,mlflow]"))
    assert code == 0
    [line] = failure_lines(run_dir)
    assert "while starting" in line and "training goes on without it" in line
    assert "s3cret" not in (run_dir / "training.log").read_text()
    assert sorted(tensorboard_scalars(run_dir)["Loss/Total"]) == [1, 2, 4, 6, 8]
    assert (run_dir / "checkpoint_latest").resolve().name == "final-00000008"
    assert "mlflow" not in saved_ids(run_dir)


def test_a_tracker_that_raises_mid_run_is_dropped_after_one_line(train_shards, val_shards, tmp_path, monkeypatch):
    real_log_metrics = mlflow.log_metrics

    def fails_from_step_4(metrics, step=None, **kwargs):
        if step >= 4:
            raise ConnectionError("mlflow.example.org: connection reset by peer")
        return real_log_metrics(metrics, step=step, **kwargs)

    monkeypatch.setattr(mlflow, "log_metrics", fails_from_step_4)
    run_dir = tmp_path / "run"
    # TensorBoard left out: the run still finishes with its checkpoints when its only tracker fails
    _, code = train(make_config(run_dir, train_shards, val_shards, "log.trackers=[mlflow]"))
    assert code == 0
    [line] = failure_lines(run_dir)
    assert "while logging (ConnectionError: mlflow.example.org: connection reset by peer)" in line
    curves = mlflow_curves((run_dir / "mlruns").as_uri(), saved_ids(run_dir)["mlflow"])
    assert sorted(curves["Loss/Total"]) == [1, 2], "dropped after the failure, not retried"
    assert not (run_dir / "logs").exists(), "no TensorBoard when log.trackers leaves it out"
    assert (run_dir / "checkpoint_latest").resolve().name == "final-00000008"


def test_a_tracker_that_is_not_installed_is_refused_before_the_run_directory_exists(train_shards, val_shards,
                                                                                    tmp_path, capsys):
    if importlib.util.find_spec("comet_ml") is not None:
        pytest.skip("comet_ml is installed here")
    run_dir = tmp_path / "run"
    code, _, err = run(capsys, train_module, "--config", TINY, f"run.dir={run_dir}",
                       f"data.train_shards={train_shards}", f"data.val_shards={val_shards}",
                       "log.trackers=[tensorboard,comet_ml]")
    assert code == 2
    assert err.strip() == ("train: error: log.trackers: comet_ml is not installed; "
                           "pip install 'vsrpp-dist[comet-ml]'")
    assert not run_dir.exists()


@pytest.mark.parametrize("override, message", [
    ("log.trackers=[tensorboard,neptune]", "log.trackers: 'neptune' is not one of tensorboard, wandb, mlflow"),
    ("log.trackers=[mlflow,mlflow]", "log.trackers: mlflow is named twice"),
    ("log.trackers=3", "log.trackers: expected a list, got 3"),
    ("log.mlflow_tracking_uri=https://bob:hunter2@mlflow.example.org",
     "log.mlflow_tracking_uri: credentials do not belong in the config"),
])
def test_bad_tracker_lists_are_refused_naming_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(TINY, [override])
    assert str(err.value).startswith(message)


def test_tracker_lists_read_as_yaml_lists_or_comma_separated_text():
    assert load_config(TINY, ["log.trackers=[tensorboard, wandb]"]).log.trackers == ("tensorboard", "wandb")
    assert load_config(TINY, ["log.trackers=mlflow,wandb"]).log.trackers == ("mlflow", "wandb")
    assert load_config(TINY).log.trackers == ("tensorboard",)


def test_parameters_are_flat_typed_and_masked():
    cfg = load_config(TINY, ["data.train_shards=s3://bucket/train", "run.dir=runs/x",
                             "data.val_shards=pipe:env AWS_SECRET_ACCESS_KEY=abc123 aws s3 cp s3://b/val/{name} -"])
    params = tracker_params(cfg)
    assert params["model.channels"] == 8 and params["ema.enabled"] is False
    assert params["degradation.first.jpeg.quality"] == "[30, 95]"  # a range as text: trackers take no lists
    assert params["data.train_shards"] == "s3://bucket/train"
    assert params["data.val_shards"] == "pipe:env AWS_SECRET_ACCESS_KEY=*** aws s3 cp s3://b/val/{name} -"
    assert all(isinstance(v, (int, float, str, bool)) for v in params.values())


@pytest.mark.slow
def test_two_ranks_make_one_tracker_run_written_by_rank_0(train_shards, val_shards, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    done = subprocess.run(launch_command(run_dir, train_shards, val_shards, "train.total_steps=6",
                                         "log.trackers=[tensorboard,mlflow,wandb]", "log.wandb_offline=true"),
                          env=launcher_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es)" in (run_dir / "training.log").read_text()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # to read it here, as the run's rank 0 did to write it
    uri = (run_dir / "mlruns").as_uri()
    client = mlflow.MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("vsrpp-dist").experiment_id])
    assert run.info.run_id == saved_ids(run_dir)["mlflow"]
    tensorboard = tensorboard_scalars(run_dir)
    assert sorted(tensorboard["Loss/Total"]) == list(range(1, 7))
    assert_same_curves(mlflow_curves(uri, run.info.run_id), tensorboard)
    assert len(list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))) == 1
    assert not failure_lines(run_dir)
