"""Smoke test of `python -m vsrpp_dist.bench loader` on a tiny real-photo frame folder: every figure is
there, rates are positive, byte counts match the files on disk. No timing thresholds: the figures
themselves come from running the command on real data (BENCHMARKS.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vsrpp_dist.tools import bench

from ..helpers import TINY as TINY_CONFIG

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")

TINY = ["--min-tile", "96", "--lr-patch", "16", "--batch-size", "4", "--clips", "12", "--warmup-clips", "4",
        "--repeats", "2"]


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    from vsrpp_dist.tools.demo_data import write_frame_folders

    root = tmp_path_factory.mktemp("bench_frames")
    write_frame_folders(root, sequences=1, frames=12, frame_hw=(216, 288), seed=3)
    return root


def _positive_rates(summary: dict) -> None:
    assert summary["median_clips_per_s"] > 0
    assert summary["min_clips_per_s"] <= summary["median_clips_per_s"] <= summary["max_clips_per_s"]
    assert all(r["clips"] >= 12 and r["seconds"] > 0 for r in summary["rounds"])


def test_loader_codecs_report(frames, tmp_path, capsys):
    work, out = tmp_path / "work", tmp_path / "bench.json"
    assert bench.main(["loader", "--frames", str(frames), "--work", str(work), "--codecs", "--json", str(out),
                       *TINY]) == 0
    result = json.loads(out.read_text())
    printed = capsys.readouterr().out

    png = result["png_folder"]
    png_files = sorted(Path(png["folder"]).rglob("*.png"))
    assert png["files"] == len(png_files) == 12 and png["level"] == 6
    assert png["bytes"] == sum(p.stat().st_size for p in png_files)

    assert [s["codec"] for s in result["shards"]] == ["webp", "png", "raw"]  # --codec first, then the others
    for entry in result["shards"]:
        tars = sorted(Path(entry["folder"]).glob("*.tar"))
        assert entry["bytes"] == sum(p.stat().st_size for p in tars) > 0 and entry["shards"] == len(tars)
        assert entry["bytes_vs_png"] == pytest.approx(entry["bytes"] / png["bytes"], rel=1e-3)
        assert entry["frames"] == 12 and entry["tile_sizes"] == [[108, 96]]
        assert [p["workers"] for p in entry["pack"]][0] == 1
        assert all(p["frames_per_s"] > 0 for p in entry["pack"]) and entry["pack_outputs_identical"]
        _positive_rates(entry["loader"])
        assert entry["loader"]["vs_baseline"] > 0 and len(entry["loader"]["per_round_vs_baseline"]) == 2
    _positive_rates(result["loader"]["baseline"])
    # decode time and clip time come from separate timed passes: on a loaded machine their ratio can pass 1
    assert 0 < result["loader"]["baseline"]["decode_share"] < 1.5

    breakdown = result["breakdown"]
    parts = ("decode", "crop_augment_stack", "read_shuffle_batch")
    assert breakdown["decode_ms"] > 0 and breakdown["crop_augment_stack_ms"] > 0
    assert sum(breakdown[f"{p}_ms"] for p in parts) == pytest.approx(breakdown["ms_per_clip"], abs=0.01)

    assert [t["name"] for t in result["targets"]] == ["clips/s per core", "x folder baseline",
                                                      "shard bytes / PNG folder bytes"]
    assert result["codec_winner"]["codec"] in ("webp", "png", "raw")
    assert result["machine"]["load_before"] and result["settings"]["gt_patch"] == 48
    for t in result["targets"]:
        assert f"{'PASS' if t['passed'] else 'FAIL'}  {t['name']}" in printed
    assert "torchvision.io.decode_png" in printed and "winner:" in printed


def test_loader_reuses_given_shards_and_png_folder(frames, tmp_path):
    from vsrpp_dist.data.pack_command import main as pack

    shards, work = tmp_path / "shards", tmp_path / "work"
    assert pack([str(frames), str(shards), "--codec", "raw", "--min-tile", "96", "--quiet"]) == 0
    before = sorted((p.name, p.stat().st_mtime_ns) for p in shards.iterdir())
    outs = []
    for run in range(2):
        outs.append(tmp_path / f"run{run}.json")
        assert bench.main(["loader", "--frames", str(frames), "--shards", str(shards), "--work", str(work),
                           "--json", str(outs[-1]), *TINY, "--repeats", "1"]) == 0
    first, second = (json.loads(p.read_text()) for p in outs)
    assert [s["codec"] for s in first["shards"]] == ["raw"] and first["shards"][0]["pack"] is None
    assert "warning" not in first["shards"][0]  # packed from --frames: like for like
    assert sorted((p.name, p.stat().st_mtime_ns) for p in shards.iterdir()) == before  # read, never rewritten
    assert first["png_folder"]["made_seconds"] is not None and second["png_folder"]["made_seconds"] is None
    assert not any(work.glob("shards-*"))


def test_bad_usage_is_one_line(tmp_path, capsys):
    assert bench.main(["loader", "--frames", str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        bench.main([])  # a subcommand is required
    assert exit_info.value.code == 2


@pytest.mark.slow
def test_quality_bench_trains_each_variant_for_the_budget_and_scores_held_out_footage(tmp_path, capsys):
    """`bench quality` end to end with the tiny model and a budget of seconds: each variant gets its own
    calibrated step count, trains in its own process, and is scored on footage it never saw."""
    out = tmp_path / "quality.json"
    assert bench.main(["quality", "--config", str(TINY_CONFIG), "--variants", "implicit,flow", "--minutes", "0.05",
                       "--calibrate-steps", "12", "--work", str(tmp_path / "work"), "--json", str(out),
                       "model.flow_levels=2", "model.max_flow=4"]) == 0
    result = json.loads(out.read_text())
    rows = {r["variant"]: r for r in result["results"]}
    assert set(rows) == {"implicit", "flow"}
    assert rows["flow"]["params"] > rows["implicit"]["params"]
    assert rows["flow"]["gflops_per_clip"] > rows["implicit"]["gflops_per_clip"]
    for row in rows.values():
        assert row["steps"] >= 10 and row["train_s"] > 0
        assert set(row["sequences"]) == {"pans/000", "pans/001"}  # the held-out photos, not trained on
        assert 10 < row["y_psnr_bicubic"] < 60 and 0 < row["y_ssim_model"] <= 1
    table = capsys.readouterr().out
    assert "variant" in table and "implicit" in table and "flow" in table
    # the data is reused by a second call, not made again; a bad variant is one line
    assert bench.main(["quality", "--variants", "optical", "--work", str(tmp_path / "work")]) == 2
    assert "--variants: unknown 'optical'" in capsys.readouterr().err
