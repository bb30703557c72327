"""`evaluate` beyond one model's PSNR/SSIM: temporal metrics, several checkpoints in one pass, the HTML
report rendered in a real (headless) Chromium, and one-line errors for what they cannot take."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vsrpp_dist.imresize import downscale
from vsrpp_dist.imresize import upscale as bicubic_x3
from vsrpp_dist.inference import evaluate
from vsrpp_dist.temporal_metrics import sequence_tde, sequence_tof

from ..helpers import run, save_weights
from .gt_set import FRAMES, load_gt


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("weights")
    return [save_weights(folder / "a" / "weights.pt", seed=1), save_weights(folder / "b" / "weights.pt", seed=2)]


def evaluate_json(capsys, path: Path, *argv) -> tuple[dict, str, str]:
    rc, stdout, stderr = run(capsys, evaluate, *argv, "--json", path, "--quiet")
    assert rc == 0, stderr
    return json.loads(path.read_text()), stdout, stderr


def test_temporal_metrics_of_bicubic_equal_an_independent_computation(checkpoints, gt_root, tmp_path, capsys):
    report, stdout, _ = evaluate_json(capsys, tmp_path / "r.json", "--checkpoint", checkpoints[0], "--data", gt_root)
    for row in report["rows"][:2]:
        gt = load_gt(gt_root / row["sequence"])
        lr = (downscale(gt.float() / 255, 3, quantize=True) * 255).round() / 255
        bicubic = (bicubic_x3(lr, 3).clamp(0, 1) * 255).round().to(torch.uint8)
        tof, tde = sequence_tof(bicubic, gt), sequence_tde(bicubic, gt)
        per_frame = report["per_frame"][row["sequence"]]["bicubic"]
        assert per_frame["tof"] == pytest.approx(tof, rel=1e-9) and len(tof) == FRAMES - 1
        assert per_frame["tde"] == pytest.approx(tde, rel=1e-9)
        assert row["tof_bicubic"] == pytest.approx(np.mean(tof)) and row["tde_bicubic"] == pytest.approx(np.mean(tde))
        # per-frame PSNR/SSIM are the frames behind the row's means
        model_frames = report["per_frame"][row["sequence"]]["model"]
        assert len(model_frames["y_psnr"]) == FRAMES
        assert row["y_psnr_model"] == pytest.approx(np.mean(model_frames["y_psnr"]))
        assert row["rgb_ssim_model"] == pytest.approx(np.mean(model_frames["rgb_ssim"]))
        assert row["tof_model"] > 0 and row["tde_model"] > 0
    overall = report["rows"][-1]
    assert overall["tde_model"] == pytest.approx((report["rows"][0]["tde_model"] + report["rows"][1]["tde_model"]) / 2)
    assert "tOF" in stdout and "TDE" in stdout
    # one checkpoint keeps the keys of earlier versions
    assert report["checkpoint"] == str(checkpoints[0]) and report["weights_step"] == 7
    assert report["models"] == [{"key": "model", "label": "model", "checkpoint": str(checkpoints[0]),
                                 "weights_step": 7, "ema": False, "model_config": report["model_config"],
                                 "model": report["model"]}]
    assert report["model"]["sha256"] and report["model"]["provenance"] == []


def test_several_checkpoints_give_the_rows_of_each_alone(checkpoints, gt_root, tmp_path, capsys):
    alone = [evaluate_json(capsys, tmp_path / f"{i}.json", "--checkpoint", c, "--data", gt_root, "--batch", 2)[0]
             for i, c in enumerate(checkpoints)]
    both, stdout, stderr = evaluate_json(capsys, tmp_path / "both.json", "--checkpoint", checkpoints[0],
                                         "--checkpoint", checkpoints[1], "--data", gt_root, "--batch", 3)
    assert [m["label"] for m in both["models"]] == ["a", "b"] and [m["key"] for m in both["models"]] == \
        ["model1", "model2"]
    metrics = ("y_psnr", "y_ssim", "rgb_psnr", "rgb_ssim", "tof", "tde")
    for key, single in zip(("model1", "model2"), alone):
        for row_both, row_alone in zip(both["rows"], single["rows"]):
            assert row_both["sequence"] == row_alone["sequence"]
            for m in metrics:
                assert row_both[f"{m}_{key}"] == pytest.approx(row_alone[f"{m}_model"], abs=1e-9), (key, m)
                assert row_both[f"{m}_bicubic"] == row_alone[f"{m}_bicubic"]
        for name, streams in single["per_frame"].items():
            for m in metrics:
                assert both["per_frame"][name][key][m] == pytest.approx(streams["model"][m], abs=1e-9)
    # the best stream of every row and metric is named, and the table marks it
    for row in both["rows"]:
        for m in metrics:
            values = {k: row[f"{m}_{k}"] for k in ("bicubic", "model1", "model2")}
            pick = min if m in ("tof", "tde") else max
            assert row[f"best_{m}"] == pick(values, key=values.get)
    header = stdout.splitlines()[0]
    assert "bicubic" in header and " a " in header and " b " in header
    assert "*" in stdout.splitlines()[3]
    assert "a: " in stderr and "b: " in stderr  # which checkpoint each label is


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def headless(browser: str, profile: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", *argv], capture_output=True, text=True, timeout=120)


IMAGES_LOADED = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const broken = images.filter(img => !(img.complete && img.naturalWidth > 0)).map(img => img.src);
  document.body.setAttribute("data-images", images.length);
  document.body.setAttribute("data-broken", broken.join(" "));
  document.body.setAttribute("data-checked", "yes");
});
</script>"""


def test_report_renders_in_chromium_with_every_image(checkpoints, gt_root, tmp_path, capsys):
    browser = chromium()
    report = tmp_path / "report"
    report.mkdir()  # an empty folder is fine
    rc, _, err = run(capsys, evaluate, "--checkpoint", checkpoints[0], "--checkpoint", checkpoints[1], "--data",
                     gt_root, "--report", report, "--quiet")
    assert rc == 0, err
    page = (report / "index.html").read_text()
    images = sorted(p.name for p in report.glob("*.png"))
    # per sequence: the PSNR plot, 3 frames x (bicubic, a, b, GT) crops, 4 temporal profiles
    assert len(images) == 2 * (1 + 3 * 4 + 4)
    assert all(f'src="{name}"' in page for name in images)
    assert "http" not in page.replace("http-equiv", "") and "<script" not in page  # nothing from the network
    profile = np.asarray(Image.open(report / "seq000_profile_0.png"))
    assert profile.shape[0] == FRAMES * 8  # one row per frame, each repeated to stay visible
    if browser is None:
        pytest.skip("chromium is not installed (CI installs it: apt-get install chromium); the page was checked "
                    "for its images but not rendered")
    # the same page with a probe script, beside it so every relative image path resolves the same way
    probe = report / "probe.html"
    probe.write_text(page.replace("</body>", IMAGES_LOADED + "</body>"))
    done = headless(browser, tmp_path / "profile", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert 'data-checked="yes"' in dom, dom[-2000:]
    assert f'data-images="{len(images)}"' in dom
    assert 'data-broken=""' in dom, dom[dom.index("data-broken"):][:500]
    shot = tmp_path / "page.png"
    done = headless(browser, tmp_path / "profile", "--window-size=1280,1600", f"--screenshot={shot}",
                    (report / "index.html").as_uri())
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(np.float64)
    assert pixels.shape[:2] == (1600, 1280)
    assert pixels.std() > 20  # not a blank page: text, table, plots and crops
    # the crops sit where the layout puts them: a region of photo colours, not just white and black text
    assert len(np.unique(pixels.reshape(-1, 3)[::7], axis=0)) > 1000


def test_bad_input_is_one_line(checkpoints, gt_root, tmp_path, capsys):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    cases = {
        "a checkpoint that does not load": (["--checkpoint", checkpoints[0], "--checkpoint", broken],
                                            "broken.pt"),
        "the same checkpoint twice": (["--checkpoint", checkpoints[0], "--checkpoint", checkpoints[0]],
                                      "given twice"),
        "report into a folder with files": (["--checkpoint", checkpoints[0], "--report", taken],
                                            "the folder holds files"),
        "report onto a file": (["--checkpoint", checkpoints[0], "--report", taken / "notes.txt"],
                               "exists and is not a folder"),
        "save with two models": (["--checkpoint", checkpoints[0], "--checkpoint", checkpoints[1], "--save",
                                  tmp_path / "sr"], "it takes one --checkpoint, not 2"),
    }
    for name, (argv, expected) in cases.items():
        rc, _, err = run(capsys, evaluate, *argv, "--data", gt_root, "--quiet")
        lines = err.strip().splitlines()
        assert rc == 2, (name, err)
        assert len(lines) == 1 and expected in lines[0], (name, err)
        assert lines[0].startswith("python -m vsrpp_dist.evaluate: error: "), (name, err)
    assert [p.name for p in taken.iterdir()] == ["notes.txt"] and (taken / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "sr").exists()


def test_a_one_frame_sequence_has_no_temporal_metrics_and_says_so_in_one_line(checkpoints, gt_root, tmp_path,
                                                                                capsys):
    data = tmp_path / "data"
    shutil.copytree(gt_root / "000", data / "000")
    (data / "single").mkdir()
    shutil.copy(sorted((gt_root / "001").glob("*.png"))[0], data / "single" / "00000000.png")
    report, _, err = evaluate_json(capsys, tmp_path / "r.json", "--checkpoint", checkpoints[0], "--data", data)
    notes = [line for line in err.splitlines() if "single" in line]
    assert notes == ["note: single: one frame: no tOF/TDE for it (temporal metrics need two consecutive frames)"]
    rows = {r["sequence"]: r for r in report["rows"]}
    assert rows["single"]["tof_model"] is None and rows["single"]["tde_bicubic"] is None
    assert rows["single"]["y_psnr_model"] is not None
    # overall: the temporal means of the sequences that have them
    assert rows["overall"]["tde_model"] == rows["000"]["tde_model"]
    assert rows["overall"]["y_psnr_model"] == pytest.approx((rows["000"]["y_psnr_model"] +
                                                             rows["single"]["y_psnr_model"]) / 2)


def test_report_shows_the_frames_and_the_square_where_the_models_differ_most():
    from vsrpp_dist.inference.comparison import SequenceScores
    from vsrpp_dist.inference.report import CROP_FRAMES, ReportCollector, best_square

    values = np.zeros((10, 12))
    values[6:9, 2:5] = 1.0
    assert best_square(values, 3) == (6, 2)

    collector = ReportCollector()
    labels = ["bicubic", "model1", "model2"]
    collector.start_sequence("seq", labels)
    h, w = 200, 240
    differs = {1: 40, 4: 90, 5: 60, 7: 20}  # frame -> how much the models differ from bicubic in the patch
    for index in range(8):
        gt = torch.full((3, h, w), 100, dtype=torch.uint8)
        model = gt.clone()
        model[:, 120:180, 30:90] += differs.get(index, 0)
        model[:, 150, :] += 5  # a row where they differ in frame 0: the profile row
        collector.frame(index, gt, {"bicubic": gt, "model1": model, "model2": model})
    collector.end_sequence(SequenceScores(labels, 0))
    seq = collector.sequences[0]
    top, left, size = seq.crop_box
    assert size == 96 and top <= 120 and top + size >= 180 and left <= 30 and left + size >= 90  # the whole patch
    assert [frame for frame, _ in seq.crops] == sorted([4, 5, 1])[:CROP_FRAMES]
    assert seq.profile_row == 150 and len(seq.profiles["GT"]) == 8
    assert set(seq.crops[0][1]) == {"bicubic", "model1", "model2", "GT"}
