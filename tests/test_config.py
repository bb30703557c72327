"""The config tree: every file in configs/ loads, overrides apply, bad keys and values are refused."""

import dataclasses
from pathlib import Path

import pytest

from vsrpp_dist.config import Config, ConfigError, describe, dump_config, load_config

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_configs_folder_has_the_promised_files():
    names = {p.stem for p in CONFIGS}
    assert {"default", "demo", "tiny", "6gb"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_file_loads(path, tmp_path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    # the dumped YAML loads back to the same tree
    again = tmp_path / "roundtrip.yaml"
    again.write_text(dump_config(cfg))
    assert load_config(again) == cfg


def test_a_shipped_config_is_found_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("configs/demo.yaml") == load_config("demo") == load_config(CONFIGS[0].parent / "demo.yaml")
    with pytest.raises(ConfigError, match="nope.yaml: config file not found .shipped configs, by name: 6gb, default"):
        load_config("nope.yaml")


def test_overrides_apply_with_types():
    cfg = load_config(None, ["model.channels=24", "optim.lr_peak=3e-4", "ema.enabled=true", "run.dir=/tmp/x"])
    assert cfg.model.channels == 24
    assert cfg.optim.lr_peak == pytest.approx(3e-4)  # YAML reads "3e-4" as a string; still a float here
    assert cfg.ema.enabled is True
    assert cfg.run.dir == "/tmp/x"


def test_override_beats_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  channels: 16\n")
    assert load_config(path, ["model.channels=20"]).model.channels == 20


@pytest.mark.parametrize("override, key", [
    ("model.chanels=3", "model.chanels"),
    ("modle.channels=3", "modle"),
    ("model.channels=abc", "model.channels"),
    ("model.channels=2.5", "model.channels"),
    ("model.channels=-4", "model.channels"),
    ("train.mixed_precision=fp8", "train.mixed_precision"),
    ("checkpoint.rolling_every=-1", "checkpoint.rolling_every"),
    ("ema.enabled=maybe", "ema.enabled"),
    ("optim.lr_peak=nan", "optim.lr_peak"),
])
def test_bad_values_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    message = str(err.value)
    assert message.startswith(key), message
    assert "\n" not in message


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="optim.lr_min"):
        load_config(None, ["optim.lr_min=1", "optim.lr_peak=0.1"])
    with pytest.raises(ConfigError, match="best_window_end"):
        load_config(None, ["checkpoint.best_window_start=9000", "checkpoint.best_window_end=100"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    section = tmp_path / "section.yaml"
    section.write_text("model: 3\n")
    with pytest.raises(ConfigError, match="^model"):
        load_config(section)


def test_config_is_frozen():
    cfg = load_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.channels = 3  # type: ignore[misc]


def test_every_key_is_documented():
    for line in describe():
        key, _, doc = line.partition("#")
        assert doc.strip(), f"undocumented config key: {key}"


def test_a_config_from_before_the_section_rename_still_loads(tmp_path, capsys):
    """Runs written before `alignment:` became `alignment_training:` (RUN/config.yaml, old command lines)
    load as they meant, with one note naming the new key; a value set differently under both is refused."""
    old_run = tmp_path / "config.yaml"
    old_run.write_text("model:\n  alignment: flow\nalignment:\n  lr_factor: 0.25\n  photometric_steps: 7\n")
    cfg = load_config(old_run, ["alignment_training.photometric_weight=0.5"])
    assert cfg.model.alignment == "flow"
    assert (cfg.alignment_training.lr_factor, cfg.alignment_training.photometric_steps) == (0.25, 7)
    assert cfg.alignment_training.photometric_weight == 0.5
    err = capsys.readouterr().err
    assert err.count("note: config section alignment is now alignment_training") == 1
    assert load_config(None, ["alignment.offset_warn_px=3"]).alignment_training.offset_warn_px == 3.0
    with pytest.raises(ConfigError, match="alignment.lr_factor: the section is now alignment_training"):
        load_config(old_run, ["alignment_training.lr_factor=2"])
    assert load_config(old_run, ["alignment_training.lr_factor=0.25"]).alignment_training.lr_factor == 0.25
    with pytest.raises(ConfigError, match="alignment: unknown key"):
        load_config(None, ["alignment=flow"])  # not a section: refused by name, as any unknown key
    capsys.readouterr()
    load_config(None, ["alignment_training.lr_factor=1"])
    assert "note:" not in capsys.readouterr().err  # the new name alone says nothing
