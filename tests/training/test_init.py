"""Starting a run from existing weights (init.from): exact strict loads, the non-strict report, freezing,
resume, provenance and the model card, and every bad input as one line before the run directory exists.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from vsrpp_dist.config import ConfigError
from vsrpp_dist.errors import CheckpointError
from vsrpp_dist.inference.loading import load_model
from vsrpp_dist.model.architecture import module_group
from vsrpp_dist.training.run_dir import StartRequest
from vsrpp_dist.training.state_files import read_tree
from vsrpp_dist.training.trainer import Trainer
from vsrpp_dist.weights import read_weights

from ..helpers import ROOT, make_config, save_legacy_weights, save_weights, sigterm_after_step, train


def reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture(scope="module")
def base_run(train_shards, val_shards, tmp_path_factory):
    """A trained implicit model with an EMA, as a user's earlier run."""
    reset_accelerate()
    run_dir = tmp_path_factory.mktemp("init") / "base"
    _, code = train(make_config(run_dir, train_shards, val_shards, "train.total_steps=6", "ema.enabled=true",
                                "ema.decay=0.5", "checkpoint.rolling_every=3"))
    assert code == 0
    reset_accelerate()
    return run_dir


def live(trainer) -> torch.nn.Module:
    return trainer.accelerator.unwrap_model(trainer.model)


def checkpoint_model(folder) -> dict[str, torch.Tensor]:
    """The live (raw) model of a checkpoint, as resume reads it."""
    return read_tree(folder / "training_state.safetensors")["model"]


# -- strict ----------------------------------------------------------------------------------------------


def test_strict_init_gives_the_source_models_exact_output(base_run, train_shards, val_shards, tmp_path):
    source = load_model(base_run / "checkpoint_best", torch.device("cpu"))
    for given in (base_run, base_run / "checkpoint_best", base_run / "checkpoint_best" / "model.safetensors"):
        reset_accelerate()
        trainer = Trainer(make_config(tmp_path / given.name, train_shards, val_shards, f"init.from={given}"),
                          interactive=False)
        try:
            torch.manual_seed(3)
            lq = torch.rand(2, 5, 3, 16, 20)
            with torch.no_grad():
                assert torch.equal(live(trainer).eval()(lq), source.model(lq)), given
            # a new run: step 0, a fresh optimizer, its own warm-up ahead
            assert trainer.state.step == 0 and not trainer.optimizer.state
            assert trainer.schedule.learning_rate(0) < trainer.schedule.learning_rate(trainer.cfg.optim.warmup_steps)
        finally:
            trainer.close()


def test_init_weights_picks_the_ema_or_the_live_model(base_run, train_shards, val_shards, tmp_path):
    best = (base_run / "checkpoint_best").resolve()
    raw = checkpoint_model(best)
    ema = read_weights(best).state_dict
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)
    for choice, expected in (("auto", ema), ("ema", ema), ("raw", raw)):
        reset_accelerate()
        trainer = Trainer(make_config(tmp_path / choice, train_shards, val_shards, f"init.from={base_run}",
                                      f"init.weights={choice}"), interactive=False)
        try:
            state = live(trainer).state_dict()
            assert all(torch.equal(state[k], expected[k]) for k in state), choice
        finally:
            trainer.close()


def test_safetensors_and_legacy_weights_give_the_same_model(tmp_path, train_shards, val_shards):
    modern = save_weights(tmp_path / "model.safetensors", seed=4)
    legacy = save_legacy_weights(tmp_path / "weights.pt", seed=4)
    lq = torch.rand(1, 5, 3, 12, 12)
    a, b = load_model(modern, torch.device("cpu")), load_model(legacy, torch.device("cpu"))
    assert torch.equal(a.model(lq), b.model(lq)) and a.step == b.step == 7
    reset_accelerate()
    trainer = Trainer(make_config(tmp_path / "run", train_shards, val_shards, f"init.from={legacy}"), interactive=False)
    try:
        assert torch.equal(live(trainer).eval()(lq), a.model(lq))
    finally:
        trainer.close()


# -- non-strict ----------------------------------------------------------------------------------------------


def test_implicit_to_flow_deform_loads_the_shared_trunks_and_reports_exact_counts(base_run, train_shards, val_shards,
                                                                                  tmp_path):
    run_dir = tmp_path / "deform"
    cfg = make_config(run_dir, train_shards, val_shards, f"init.from={base_run}", "init.strict=false",
                      "model.alignment=flow_deform", "model.deform_groups=2")
    source = read_weights(base_run / "checkpoint_best").state_dict
    trainer = Trainer(cfg, interactive=False)
    try:
        state = live(trainer).state_dict()
        shared = [k for k in state if k in source and source[k].shape == state[k].shape]
        new = [k for k in state if k not in source]
        assert len(shared) == len(source) and new  # every implicit tensor has its place in flow_deform
        assert all(torch.equal(state[k], source[k]) for k in shared)
        assert {module_group(k) for k in new} == {"alignment"}
        log = (run_dir / "training.log").read_text()
        params = sum(state[k].numel() for k in shared)
        total = sum(t.numel() for t in state.values())
        assert (f"init: loaded {len(shared)} of {len(state)} tensors, {params:,} of {total:,} parameters "
                f"({100 * params / total:.1f}% of the model)") in log
        new_params = sum(state[k].numel() for k in new)
        assert f"init: new (kept as initialised): alignment ({len(new)} tensors, {new_params:,} parameters)" in log
        assert "skipped for shape" not in log and "unused from the source" not in log
    finally:
        trainer.close()


def test_a_different_shape_is_skipped_and_reported_with_both_shapes(base_run, train_shards, val_shards, tmp_path):
    run_dir = tmp_path / "wider_upsampler"
    trainer = Trainer(make_config(run_dir, train_shards, val_shards, f"init.from={base_run}", "init.strict=false",
                                  "model.upsample_channels=6"), interactive=False)
    try:
        source = read_weights(base_run / "checkpoint_best").state_dict
        state = live(trainer).state_dict()
        skipped = [k for k in state if source[k].shape != state[k].shape]
        assert skipped and all(k.startswith("upsampler.") for k in skipped)
        log = (run_dir / "training.log").read_text()
        for key in skipped:
            assert (f"init: skipped for shape: {key}: source {list(source[key].shape)}, model "
                    f"{list(state[key].shape)}") in log
        assert all(torch.equal(state[k], source[k]) for k in state if k not in skipped)
        assert f"init: loaded {len(state) - len(skipped)} of {len(state)} tensors" in log
    finally:
        trainer.close()


# -- freezing and resume --------------------------------------------------------------------------------------


def test_frozen_groups_stay_fixed_for_k_steps_and_learn_after(base_run, train_shards, val_shards, tmp_path):
    run_dir = tmp_path / "frozen"
    _, code = train(make_config(run_dir, train_shards, val_shards, f"init.from={base_run}", "init.weights=raw",
                                "init.freeze=extract,propagation", "init.freeze_steps=3", "train.total_steps=5",
                                "checkpoint.rolling_every=1", "checkpoint.rolling_keep=10", "validation.every=0",
                                "optim.warmup_steps=0"))
    assert code == 0
    start = checkpoint_model((base_run / "checkpoint_best").resolve())
    by_step = {int(p.name.split("-")[1]): checkpoint_model(p) for p in (run_dir / "checkpoints").iterdir()}
    frozen = [k for k in start if module_group(k) in ("extract", "propagation")]
    learning = [k for k in start if k not in frozen]
    for step in (1, 2, 3):
        assert all(torch.equal(by_step[step][k], start[k]) for k in frozen), step
        assert any(not torch.equal(by_step[step][k], start[k]) for k in learning), step
    assert any(not torch.equal(by_step[4][k], start[k]) for k in frozen)  # step 4 is the first with them free
    assert "init: extract, propagation fixed (LR factor 0) until step 3" in (run_dir / "training.log").read_text()


def test_resume_in_the_middle_of_a_freeze_is_exact_and_never_rereads_init_from(base_run, train_shards, val_shards,
                                                                              tmp_path):
    copy = tmp_path / "source.safetensors"
    copy.write_bytes((base_run / "checkpoint_best" / "model.safetensors").read_bytes())
    args = (f"init.from={copy}", "init.freeze=extract", "init.freeze_steps=3", "train.total_steps=5",
            "validation.every=0", "checkpoint.rolling_every=1")
    whole, code = train(make_config(tmp_path / "whole", train_shards, val_shards, *args))
    assert code == 0
    expected = {k: v.clone() for k, v in live(whole).state_dict().items()}
    reset_accelerate()
    interrupted = tmp_path / "interrupted"
    _, code = train(make_config(interrupted, train_shards, val_shards, *args), patch=sigterm_after_step(2))
    assert code == 143
    copy.unlink()  # a resumed run restores its own checkpoint and never reads init.from again
    reset_accelerate()
    resumed, code = train(make_config(interrupted, train_shards, val_shards, *args), StartRequest(resume="latest"))
    assert code == 0 and resumed.state.step == 5
    state = live(resumed).state_dict()
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    # where the run started survives the resume, into its final weights
    assert read_weights(interrupted / "checkpoint_latest").provenance[0]["from"] == str(copy)


# -- provenance and the model card ----------------------------------------------------------------------------------


def test_provenance_chain_and_model_card(base_run, train_shards, val_shards, tmp_path):
    stage2 = tmp_path / "stage2"
    _, code = train(make_config(stage2, train_shards, val_shards, f"init.from={base_run}", "train.total_steps=2",
                                "degradation.kind=realistic"))
    assert code == 0
    reset_accelerate()
    stage3 = tmp_path / "stage3"
    _, code = train(make_config(stage3, train_shards, val_shards, f"init.from={stage2}/checkpoint_latest",
                                "train.total_steps=2"))
    assert code == 0
    final = (stage3 / "checkpoint_latest").resolve()
    chain = read_weights(final).provenance
    stage2_file = (stage2 / "checkpoint_latest").resolve() / "model.safetensors"
    base_file = (base_run / "checkpoint_best").resolve() / "model.safetensors"
    assert [entry["file"] for entry in chain] == [str(stage2_file), str(base_file)]
    assert chain[0]["degradation"] == "realistic" and chain[1]["degradation"] == "bicubic"
    assert chain[1]["sha256"] == read_weights(base_file).sha256 and chain[1]["step"] == 6
    meta = json.loads((final / "meta.json").read_text())
    assert meta["provenance"] == chain
    card = (final / "MODEL_CARD.md").read_text()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    import yaml

    assert yaml.safe_load(front)["base_model"] == f"{stage2}/checkpoint_latest"
    assert "## Validation" in body and "| 2 |" in body  # the last validation table, at step 2
    assert chain[1]["sha256"] in body and chain[0]["sha256"] in body
    assert "4 sequences, 56 frames" in body  # the training set, from its manifest
    # evaluate --json names the weights it scored and where their training started
    from vsrpp_dist.inference import evaluate

    report = tmp_path / "eval.json"
    assert evaluate.cli(["--checkpoint", str(stage3 / "checkpoint_latest"), "--data", str(val_shards), "--json",
                         str(report), "--quiet"]) == 0
    model = json.loads(report.read_text())["model"]
    assert model["sha256"] == read_weights(final).sha256 and model["provenance"] == chain and model["step"] == 2


def test_every_module_group_can_be_frozen_by_name():
    """init.freeze's choices (config.py, which the model cannot import) are the model's module groups."""
    from vsrpp_dist.config import FREEZABLE_GROUPS
    from vsrpp_dist.model.architecture import MODULE_GROUPS

    assert tuple(MODULE_GROUPS) == FREEZABLE_GROUPS


def test_a_model_card_says_real_lr_pairs_were_the_input_when_they_were():
    """Shards packed with real LR are the input as they are, whatever degradation.kind says."""
    from vsrpp_dist.config import load_config
    from vsrpp_dist.training.model_card import render

    data = {"location": "shards", "sequences": 4, "frames": 56, "codec": "webp", "sources": [], "real_lr": True}
    common = dict(step=2, parameters=10, ema=False, provenance=[], val_data=None, validation=None, run_dir="run")
    paired = render(load_config(None), train_data=data, **common)
    assert "input frames: the real LR frames packed with the training data" in paired and "real-lr-pairs" in paired
    assert "degradation-bicubic" not in paired
    made = render(load_config(None), train_data={**data, "real_lr": False}, **common)
    assert "made from the ground truth): bicubic" in made and "degradation-bicubic" in made


# -- bad input: one line, no run directory --------------------------------------------------------------------


class RunsCode:
    """A pickle that would create a file if it were ever unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def bad_sources(base_run, tmp_path) -> dict[str, tuple[list[str], str]]:
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as handle:
        pickle.dump({"format": "vsrpp-weights", "state_dict": RunsCode(marker)}, handle)
    evil_zip = tmp_path / "evil_zip.pt"
    torch.save({"state_dict": RunsCode(marker)}, evil_zip)
    disguised = tmp_path / "model.safetensors"
    disguised.write_bytes(evil.read_bytes())
    text = tmp_path / "notes.txt"
    text.write_text("not weights")
    nan = save_weights(tmp_path / "nan.safetensors")
    weights = read_weights(nan)
    weights.state_dict["fusion.0.weight"][0, 0, 0, 0] = float("nan")
    from vsrpp_dist.weights import save_weights as write

    write(nan, weights.state_dict, model_config=weights.model_config, ema=False, step=7, provenance=[])
    return {
        "missing": (["init.from=/nowhere/at/all"], "init.from: /nowhere/at/all: no such run directory, checkpoint"),
        "text file": ([f"init.from={text}"], "not a weights file"),
        "pickle with code": ([f"init.from={evil}"], "refused: not a tensors-only weights file (unpickling it would construct Python objects"),
        "zip pickle with code": ([f"init.from={evil_zip}"], "refused: not a tensors-only weights file"),
        "pickle named safetensors": ([f"init.from={disguised}"], "refused: not a tensors-only weights file"),
        "nan weights": ([f"init.from={nan}"], "hold NaN or Inf (first: fusion.0.weight)"),
        "other channels": ([f"init.from={base_run}", "model.channels=16"],
                           "model.channels: checkpoint 8, this run 16; set them to match, or set init.strict=false"),
        "other alignment": ([f"init.from={base_run}", "model.alignment=flow"],
                            "model.alignment: checkpoint 'implicit', this run 'flow'"),
        "freeze without from": (["init.freeze=extract", "init.freeze_steps=2"], "init.freeze: freezing keeps"),
    }


def test_every_bad_source_is_one_line_and_makes_no_run_directory(base_run, train_shards, val_shards, tmp_path):
    marker = tmp_path / "code-ran"
    for name, (overrides, expected) in bad_sources(base_run, tmp_path).items():
        run_dir = tmp_path / f"run-{name.replace(' ', '-')}"
        reset_accelerate()
        with pytest.raises(ConfigError) as err:
            Trainer(make_config(run_dir, train_shards, val_shards, *overrides), interactive=False)
        message = str(err.value)
        assert expected in message and "\n" not in message, (name, message)
        assert not run_dir.exists(), name
    assert not marker.exists(), "a pickle in a weights file was run"


def test_init_weights_ema_from_a_run_without_ema_is_refused(tmp_path, train_shards, val_shards):
    weights = save_weights(tmp_path / "plain.safetensors")
    with pytest.raises(ConfigError, match="has no EMA weights"):
        Trainer(make_config(tmp_path / "run", train_shards, val_shards, f"init.from={weights}", "init.weights=ema"),
                interactive=False)
    assert not (tmp_path / "run").exists()


def test_the_train_command_prints_one_line_for_a_code_carrying_pickle(tmp_path, train_shards, val_shards):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as handle:
        pickle.dump(RunsCode(marker), handle)
    run_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, str(ROOT / "vsrpp_dist" / "train.py"), "--config",
                             str(ROOT / "configs" / "tiny.yaml"), f"run.dir={run_dir}",
                             f"data.train_shards={train_shards}", f"data.val_shards={val_shards}",
                             f"init.from={evil}"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "refused" in lines[0] and str(evil) in lines[0], result.stderr
    assert not marker.exists() and not run_dir.exists()


# -- what a resume reads is data (issue 23, item 1) -----------------------------------------------------------


def test_resume_never_unpickles_and_refuses_a_damaged_generator_file(base_run, train_shards, val_shards, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(base_run, run_dir, symlinks=True)
    newest = (run_dir / "checkpoint_latest").resolve()
    marker = tmp_path / "code-ran"
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin"):  # Accelerate's old files
        with open(newest / name, "wb") as handle:
            pickle.dump(RunsCode(marker), handle)
    args = ("train.total_steps=6", "ema.enabled=true", "ema.decay=0.5", "checkpoint.rolling_every=3")
    trainer = Trainer(make_config(run_dir, train_shards, val_shards, *args), StartRequest(resume="latest"),
                      interactive=False)
    trainer.close()
    assert trainer.state.step == 6 and not marker.exists()

    # one flipped byte in the generator states: that checkpoint cannot be continued exactly
    rng = newest / "rng_state_0.safetensors"
    data = bytearray(rng.read_bytes())
    data[-3] ^= 0x10
    rng.write_bytes(bytes(data))
    reset_accelerate()
    with pytest.raises(CheckpointError) as err:
        Trainer(make_config(run_dir, train_shards, val_shards, *args), StartRequest(resume=str(newest)),
                interactive=False)
    assert "rng_state_0.safetensors is damaged" in str(err.value) and "\n" not in str(err.value)
    reset_accelerate()
    older = Trainer(make_config(run_dir, train_shards, val_shards, *args), StartRequest(resume="latest"),
                    interactive=False)
    older.close()
    assert older.state.step == 3  # the newest was skipped, with a warning naming it
    log = (run_dir / "training.log").read_text()
    assert f"checkpoint {newest.name}: rng_state_0.safetensors is damaged" in log and "trying the next older one" in log
    assert not marker.exists()


def test_a_checkpoint_in_accelerates_pickle_format_is_refused_not_unpickled(base_run, train_shards, val_shards,
                                                                           tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(base_run, run_dir, symlinks=True)
    newest = (run_dir / "checkpoint_latest").resolve()
    marker = tmp_path / "code-ran"
    (newest / "training_state.safetensors").unlink()
    with open(newest / "custom_checkpoint_0.pkl", "wb") as handle:
        pickle.dump(RunsCode(marker), handle)
    with pytest.raises(CheckpointError) as err:
        Trainer(make_config(run_dir, train_shards, val_shards, "train.total_steps=6", "ema.enabled=true"),
                StartRequest(resume=str(newest)), interactive=False)
    message = str(err.value)
    assert "Accelerate's pickle format" in message and f"init.from={newest}" in message and "\n" not in message
    assert not marker.exists()
