"""`python -m vsrpp_dist.evaluate`: the bicubic baseline against an independent computation, the model
against training validation and against `upscale`, packed sets, real LR pairs, cropping, --save, JSON,
and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vsrpp_dist.config import ValidationConfig
from vsrpp_dist.imresize import downscale
from vsrpp_dist.imresize import upscale as bicubic_x3
from vsrpp_dist.inference import evaluate, upscale
from vsrpp_dist.metrics import psnr
from vsrpp_dist.weights import WEIGHTS_FILE

from ..helpers import ROOT, OneProcess, Quiet, read_pngs, run, save_weights
from .gt_set import FRAMES, GT_HW, load_gt


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return save_weights(tmp_path_factory.mktemp("weights") / WEIGHTS_FILE, seed=1)


def lr_of(gt_nchw: torch.Tensor) -> torch.Tensor:
    """BI LR frames as uint8, made independently of evaluate's pipeline."""
    return (downscale(gt_nchw.float() / 255, 3, quantize=True) * 255).round().to(torch.uint8)


def write_lr_folders(gt_root: Path, lr_root: Path) -> None:
    for seq in sorted(p for p in gt_root.iterdir() if p.is_dir()):
        (lr_root / seq.name).mkdir(parents=True)
        for frame, name in zip(lr_of(load_gt(seq)), sorted(p.name for p in seq.glob("*.png"))):
            Image.fromarray(frame.permute(1, 2, 0).numpy()).save(lr_root / seq.name / name)


def evaluate_json(capsys, tmp_path: Path, *argv, name="report.json") -> tuple[dict, str, str]:
    out = tmp_path / name
    rc, stdout, stderr = run(capsys, evaluate, *argv, "--json", out, "--quiet")
    assert rc == 0, stderr
    return json.loads(out.read_text()), stdout, stderr


def rows_by_name(report: dict) -> dict[str, dict]:
    return {row["sequence"]: row for row in report["rows"]}


def test_bicubic_row_equals_an_independent_computation(weights, gt_root, tmp_path, capsys):
    from skimage.metrics import peak_signal_noise_ratio

    report, stdout, _ = evaluate_json(capsys, tmp_path, "--checkpoint", weights, "--data", gt_root, "--batch", 4)
    rows = rows_by_name(report)
    assert list(rows) == ["000", "001", "overall"]
    assert rows["overall"]["frames"] == 2 * FRAMES
    for name in ("000", "001"):
        gt = load_gt(gt_root / name)
        bicubic = bicubic_x3(lr_of(gt).float() / 255).clamp(0, 1)
        bicubic_u8 = (bicubic * 255).round().to(torch.uint8)
        y_psnr = psnr(bicubic, gt.float() / 255, y_channel=True, quantize=True).mean().item()
        # RGB PSNR by scikit-image on the 8-bit images a user would save
        rgb_psnr = np.mean([peak_signal_noise_ratio(g.numpy(), b.numpy(), data_range=255)
                            for g, b in zip(gt, bicubic_u8)])
        assert rows[name]["frames"] == FRAMES
        assert rows[name]["y_psnr_bicubic"] == pytest.approx(y_psnr, abs=1e-9)
        assert rows[name]["rgb_psnr_bicubic"] == pytest.approx(rgb_psnr, abs=1e-9)
    for key in ("y_psnr_model", "y_ssim_bicubic", "rgb_ssim_model"):
        assert rows["overall"][key] == pytest.approx((rows["000"][key] + rows["001"][key]) / 2)
    assert "overall" in stdout and "Y-PSNR" in stdout and "RGB-SSIM" in stdout
    assert report["crop_border"] == 0 and report["weights_step"] == 7


def test_save_writes_what_upscale_makes_of_the_lr_frames(weights, gt_root, tmp_path, capsys):
    rc, _, err = run(capsys, evaluate, "--checkpoint", weights, "--data", gt_root, "--save", tmp_path / "sr", "--quiet")
    assert rc == 0, err
    write_lr_folders(gt_root, tmp_path / "lr")
    for name in ("000", "001"):
        saved = read_pngs(tmp_path / "sr" / name)
        assert list(saved) == sorted(p.name for p in (gt_root / name).glob("*.png"))
        assert all(frame.shape == (*GT_HW, 3) for frame in saved.values())
        assert run(capsys, upscale, "--checkpoint", weights, "--input", tmp_path / "lr" / name,
                   "--output", tmp_path / "up" / name, "--quiet")[0] == 0
        upscaled = read_pngs(tmp_path / "up" / name)
        for key, frame in saved.items():
            np.testing.assert_array_equal(frame, upscaled[key])
    # a second run would overwrite them: refused, one line
    rc, _, err = run(capsys, evaluate, "--checkpoint", weights, "--data", gt_root, "--save", tmp_path / "sr", "--quiet")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "already holds PNG frames" in err


def test_real_lr_pairs_give_the_same_numbers_as_bi(weights, gt_root, tmp_path, capsys):
    write_lr_folders(gt_root, tmp_path / "lr")
    bi, _, _ = evaluate_json(capsys, tmp_path, "--checkpoint", weights, "--data", gt_root, name="bi.json")
    pairs, _, _ = evaluate_json(capsys, tmp_path, "--checkpoint", weights, "--data", gt_root, "--lr",
                                tmp_path / "lr", name="pairs.json")
    assert pairs["rows"] == bi["rows"]
    assert pairs["lr"] == str(tmp_path / "lr")


def test_packed_set_matches_frame_folders_and_training_validation(weights, gt_root, tmp_path, capsys):
    from vsrpp_dist.data.pack_command import main as pack
    from vsrpp_dist.data.validation_set import ValidationSet
    from vsrpp_dist.inference.loading import load_model
    from vsrpp_dist.training.validation import Validator

    assert pack(["--val", str(gt_root), str(tmp_path / "val")]) == 0
    capsys.readouterr()
    folders, _, _ = evaluate_json(capsys, tmp_path, "--checkpoint", weights, "--data", gt_root, name="f.json")
    packed, _, _ = evaluate_json(capsys, tmp_path, "--checkpoint", weights, "--data", tmp_path / "val",
                                 "--batch", 3, name="p.json")
    for a, b in zip(folders["rows"], packed["rows"]):
        assert a == pytest.approx(b, abs=1e-9)

    validator = Validator(ValidationSet(tmp_path / "val"), ValidationConfig(images=0), OneProcess(), Quiet())
    scores = validator.run(load_model(weights, torch.device("cpu")).model, step=0)
    overall = rows_by_name(packed)["overall"]
    # Validator averages its frames in float32: equal to ~1e-7 relative
    assert overall["y_psnr_model"] == pytest.approx(scores["KI_PSNR"], abs=1e-5)
    assert overall["y_psnr_bicubic"] == pytest.approx(scores["LR_PSNR"], abs=1e-5)
    assert overall["rgb_ssim_model"] == pytest.approx(scores["KI_SSIM_RGB"], abs=1e-6)


def test_a_set_packed_with_real_lr_is_scored_on_it_by_evaluate_and_validation(weights, gt_root, tmp_path, capsys):
    """Real LR frames (a box filter here, not bicubic) packed with the set are the input, the same as the
    folder given by --lr, in evaluate and in a run's validation; --degradation realistic still asks for
    GT degraded instead."""
    from vsrpp_dist.config import DegradationConfig
    from vsrpp_dist.data.degradation import for_scoring
    from vsrpp_dist.data.pack_command import main as pack
    from vsrpp_dist.data.validation_set import ValidationSet
    from vsrpp_dist.inference.loading import load_model
    from vsrpp_dist.training.validation import Validator

    lr_root = tmp_path / "box"
    for seq in sorted(p for p in gt_root.iterdir() if p.is_dir()):
        (lr_root / seq.name).mkdir(parents=True)
        for frame in sorted(seq.glob("*.png")):
            image = Image.open(frame)
            image.resize((image.width // 3, image.height // 3), Image.BOX).save(lr_root / seq.name / frame.name)
    assert pack(["--val", str(gt_root), str(tmp_path / "val"), "--lr", str(lr_root)]) == 0
    capsys.readouterr()
    given, _, _ = evaluate_json(capsys, tmp_path, "--checkpoint", weights, "--data", gt_root, "--lr", lr_root,
                                name="given.json")
    packed, _, _ = evaluate_json(capsys, tmp_path, "--checkpoint", weights, "--data", tmp_path / "val",
                                 name="packed.json")
    bi, _, _ = evaluate_json(capsys, tmp_path, "--checkpoint", weights, "--data", gt_root, name="bi.json")
    assert packed["lr"] == "real LR frames packed with the set"
    for a, b in zip(given["rows"], packed["rows"]):
        assert a == pytest.approx(b, abs=1e-9)
    assert rows_by_name(packed)["overall"]["y_psnr_bicubic"] != pytest.approx(rows_by_name(bi)["overall"]["y_psnr_bicubic"])

    dataset = ValidationSet(tmp_path / "val")
    validator = Validator(dataset, ValidationConfig(images=0), OneProcess(), Quiet(),
                          degradation=for_scoring(DegradationConfig(kind="realistic"), packed_lr=dataset.has_lr))
    scores = validator.run(load_model(weights, torch.device("cpu")).model, step=0)
    assert rows_by_name(packed)["overall"]["y_psnr_model"] == pytest.approx(scores["KI_PSNR"], abs=1e-5)
    assert rows_by_name(packed)["overall"]["y_psnr_bicubic"] == pytest.approx(scores["LR_PSNR"], abs=1e-5)

    realistic, _, _ = evaluate_json(capsys, tmp_path, "--checkpoint", weights, "--data", tmp_path / "val",
                                    "--degradation", "realistic", name="realistic.json")
    assert realistic["lr"] == "realistic degradation (default ranges), seed 0"
    assert rows_by_name(realistic)["overall"]["y_psnr_bicubic"] < rows_by_name(packed)["overall"]["y_psnr_bicubic"] - 1


def test_gt_not_divisible_by_3_is_cropped_with_a_note(weights, gt_root, tmp_path, capsys):
    odd = tmp_path / "odd" / "000"
    odd.mkdir(parents=True)
    for p in sorted((gt_root / "000").glob("*.png")):
        frame = np.array(Image.open(p))
        padded = np.pad(frame, ((0, 2), (0, 1), (0, 0)), mode="edge")  # 74x91: cropped back to 72x90
        Image.fromarray(padded).save(odd / p.name)
    cropped, _, err = evaluate_json(capsys, tmp_path, "--checkpoint", weights, "--data", odd, name="odd.json")
    assert "note: 000: GT frames are 91x74 (WxH); cropped to 90x72" in err
    whole, _, _ = evaluate_json(capsys, tmp_path, "--checkpoint", weights, "--data", gt_root / "000",
                                name="whole.json")
    assert cropped["rows"] == whole["rows"]


def test_crop_border_changes_the_measured_area(weights, gt_root, tmp_path, capsys):
    plain, _, _ = evaluate_json(capsys, tmp_path, "--checkpoint", weights, "--data", gt_root / "001", name="a.json")
    cropped, _, _ = evaluate_json(capsys, tmp_path, "--checkpoint", weights, "--data", gt_root / "001",
                                  "--crop-border", 3, name="b.json")
    gt = load_gt(gt_root / "001")
    bicubic = bicubic_x3(lr_of(gt).float() / 255)
    expected = psnr(bicubic, gt.float() / 255, crop_border=3, quantize=True).mean().item()
    assert cropped["rows"][-1]["y_psnr_bicubic"] == pytest.approx(expected, abs=1e-9)
    assert cropped["rows"][-1]["y_psnr_bicubic"] != plain["rows"][-1]["y_psnr_bicubic"]
    assert cropped["crop_border"] == 3


# -- bad input ---------------------------------------------------------------------------------------


def test_bad_input_is_one_line_and_exit_2(weights, gt_root, tmp_path, capsys):
    from vsrpp_dist.data.pack_command import main as pack

    bad_lr = tmp_path / "bad_lr"
    for name in ("000", "001"):
        (bad_lr / name).mkdir(parents=True)
        for i in range(FRAMES):
            Image.new("RGB", (31, 24)).save(bad_lr / name / f"{i:08d}.png")
    short_lr = tmp_path / "short_lr"
    write_lr_folders(gt_root, short_lr)
    (short_lr / "001" / "00000005.png").unlink()
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for i, size in enumerate([(90, 72)] * 3 + [(93, 72)] + [(90, 72)] * 2):
        Image.new("RGB", size).save(mixed / f"{i}.png")
    odd_gt = tmp_path / "odd_gt" / "000"
    odd_gt.mkdir(parents=True)
    odd_lr = tmp_path / "odd_lr" / "000"
    odd_lr.mkdir(parents=True)
    for i in range(5):
        Image.new("RGB", (91, 72)).save(odd_gt / f"{i}.png")
        Image.new("RGB", (30, 24)).save(odd_lr / f"{i}.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "taken.json").write_text("{}")
    train = tmp_path / "train"
    assert pack([str(gt_root), str(train), "--min-tile", "24"]) == 0
    capsys.readouterr()
    wrong_fit = tmp_path / "wrong.pt"
    from vsrpp_dist.config import ModelConfig, config_to_dict

    from ..helpers import TINY_MODEL

    says_one_block = config_to_dict(ModelConfig(**{**TINY_MODEL, "reconstruction_blocks": 1}))
    save_weights(wrong_fit, model_config=says_one_block, reconstruction_blocks=2)

    base = ["--checkpoint", weights, "--data", gt_root, "--quiet"]
    cases = {
        "missing data": (["--checkpoint", weights, "--data", tmp_path / "nope"], "nope: no such file or folder"),
        "folder without frames": (["--checkpoint", weights, "--data", tmp_path / "empty"], "empty: no image frames"),
        "mixed frame sizes": (["--checkpoint", weights, "--data", mixed], "3.png: frame is 93x72"),
        "LR not GT/3": (base + ["--lr", bad_lr], "LR frame is 31x24 (WxH) but its GT is 90x72"),
        "LR frame missing": (base + ["--lr", short_lr], "5 LR frames for 6 GT frames"),
        "LR with GT not divisible": (["--checkpoint", weights, "--data", odd_gt, "--lr", odd_lr],
                                     "LR frame is 30x24 (WxH) but its GT is 91x72"),
        "missing LR folder": (base + ["--lr", tmp_path / "no_lr"], "no_lr: no such file or folder"),
        "training shards": (["--checkpoint", weights, "--data", train], "holds a 'train' split"),
        "missing checkpoint": (["--checkpoint", tmp_path / "none.pt", "--data", gt_root],
                               "none.pt: no such checkpoint"),
        "weights do not fit": (["--checkpoint", wrong_fit, "--data", gt_root],
                               "weights do not fit its model_config (channels=8, blocks=1/1/1, upsample_channels=8): "
                               "4 weights the model does not have (first: reconstruction.1.conv1."),
        "existing json": (base + ["--json", tmp_path / "taken.json"], "taken.json: exists"),
        "crop border too large": (base + ["--crop-border", 31], "--crop-border 31 leaves 10 px"),
    }
    for name, (argv, expected) in cases.items():
        rc, _, err = run(capsys, evaluate, *argv, *([] if "--quiet" in argv else ["--quiet"]))
        lines = err.strip().splitlines()
        assert rc == 2, (name, err)
        assert len(lines) == 1 and expected in lines[0], (name, err)
        assert lines[0].startswith("python -m vsrpp_dist.evaluate: error: "), (name, err)
    assert (tmp_path / "taken.json").read_text() == "{}"


def test_module_entry_point_reports_one_line(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "vsrpp_dist.evaluate", "--checkpoint", str(tmp_path / "w.pt"),
                           "--data", str(tmp_path / "missing")],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"python -m vsrpp_dist.evaluate: error: --data {tmp_path / 'missing'}: "
                                                "no such file or folder"]
