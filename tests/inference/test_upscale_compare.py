"""`upscale --compare bicubic`: the bicubic enlargement and the model's output in one frame, side by side
or split at the middle, as PNG frames and as a video."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vsrpp_dist.imresize import upscale as bicubic_x3
from vsrpp_dist.inference import upscale
from vsrpp_dist.inference.side_by_side import DIVIDER_PX, LABEL_BOX
from vsrpp_dist.metrics import psnr
from vsrpp_dist.weights import WEIGHTS_FILE

from ..helpers import read_pngs, run, save_weights, write_coded_video

LR_HW = (24, 30)
BELOW_LABEL = LABEL_BOX[0]  # rows under the corner labels hold the pictures untouched


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return save_weights(tmp_path_factory.mktemp("weights") / WEIGHTS_FILE, seed=3)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    from vsrpp_dist.tools.demo_data import write_frame_folders

    root = tmp_path_factory.mktemp("clip")
    write_frame_folders(root, sequences=1, frames=6, frame_hw=LR_HW, seed=2, photos=("coffee",))
    return root / "000"


def bicubic_of(clip: Path) -> dict[str, np.ndarray]:
    out = {}
    for p in sorted(clip.glob("*.png")):
        lq = torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1)[None].float() / 255
        out[p.name] = (bicubic_x3(lq).clamp(0, 1) * 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
    return out


def test_side_by_side_frames_hold_bicubic_and_the_plain_output(weights, clip, tmp_path, capsys):
    assert run(capsys, upscale, "--checkpoint", weights, "--input", clip, "--output", tmp_path / "plain",
               "--quiet")[0] == 0
    rc, stdout, err = run(capsys, upscale, "--checkpoint", weights, "--input", clip, "--output", tmp_path / "side",
                          "--compare", "bicubic", "--quiet")
    assert rc == 0, err
    assert "(bicubic | model, side)" in stdout
    plain, side, bicubic = read_pngs(tmp_path / "plain"), read_pngs(tmp_path / "side"), bicubic_of(clip)
    assert list(side) == list(plain) == list(bicubic)
    h, w = 3 * LR_HW[0], 3 * LR_HW[1]
    for name, frame in side.items():
        assert frame.shape == (h, 2 * w, 3)
        np.testing.assert_array_equal(frame[BELOW_LABEL:, :w], bicubic[name][BELOW_LABEL:])
        np.testing.assert_array_equal(frame[BELOW_LABEL:, w:], plain[name][BELOW_LABEL:])
        assert not np.array_equal(frame[:BELOW_LABEL, :w], bicubic[name][:BELOW_LABEL])  # the label is drawn


def test_split_keeps_the_size_with_bicubic_left_and_the_model_right(weights, clip, tmp_path, capsys):
    assert run(capsys, upscale, "--checkpoint", weights, "--input", clip, "--output", tmp_path / "plain",
               "--quiet")[0] == 0
    rc, _, err = run(capsys, upscale, "--checkpoint", weights, "--input", clip, "--output", tmp_path / "split",
                     "--compare", "bicubic", "--compare-layout", "split", "--quiet")
    assert rc == 0, err
    plain, split, bicubic = read_pngs(tmp_path / "plain"), read_pngs(tmp_path / "split"), bicubic_of(clip)
    w = 3 * LR_HW[1]
    middle = w // 2
    for name, frame in split.items():
        assert frame.shape == plain[name].shape
        left, right = middle - DIVIDER_PX // 2, middle + DIVIDER_PX // 2
        np.testing.assert_array_equal(frame[BELOW_LABEL:, :left], bicubic[name][BELOW_LABEL:, :left])
        np.testing.assert_array_equal(frame[BELOW_LABEL:, right:], plain[name][BELOW_LABEL:, right:])
        assert (frame[:, left:right] == 255).all()  # the dividing line


def test_compare_video_plays_both_halves(weights, clip, tmp_path, capsys):
    import av

    frames = [np.asarray(Image.open(p)) for p in sorted(clip.glob("*.png"))]
    source = tmp_path / "clip.mp4"
    write_coded_video(source, frames, "libx264", pix_fmt="yuv444p")
    rc, _, err = run(capsys, upscale, "--checkpoint", weights, "--input", source, "--output", tmp_path / "cmp.mp4",
                     "--compare", "bicubic", "--crf", "0", "--quiet")
    assert rc == 0, err
    assert run(capsys, upscale, "--checkpoint", weights, "--input", source, "--output", tmp_path / "plain",
               "--quiet")[0] == 0
    plain = list(read_pngs(tmp_path / "plain").values())
    with av.open(str(tmp_path / "cmp.mp4")) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == len(frames)
    h, w = 3 * LR_HW[0], 3 * LR_HW[1]
    for frame, model in zip(decoded, plain):
        assert frame.shape == (h, 2 * w, 3)
        right = torch.from_numpy(frame[BELOW_LABEL:, w:].copy()).permute(2, 0, 1)[None].float() / 255
        reference = torch.from_numpy(model[BELOW_LABEL:].copy()).permute(2, 0, 1)[None].float() / 255
        assert psnr(right, reference).item() > 35  # the right half is the model's frame, through the codec


def test_compare_layout_alone_says_it_does_nothing(weights, clip, tmp_path, capsys):
    rc, _, err = run(capsys, upscale, "--checkpoint", weights, "--input", clip, "--output", tmp_path / "out",
                     "--compare-layout", "split", "--quiet")
    assert rc == 0
    assert "note: --compare-layout has no effect without --compare bicubic" in err
    assert next(iter(read_pngs(tmp_path / "out").values())).shape == (3 * LR_HW[0], 3 * LR_HW[1], 3)
    with pytest.raises(SystemExit) as stop:  # argparse's own errors exit from inside main
        run(capsys, upscale, "--checkpoint", weights, "--input", clip, "--output", tmp_path / "x", "--compare", "lanczos")
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1 and "invalid choice: 'lanczos'" in err
