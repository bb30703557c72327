"""`python -m vsrpp_dist.upscale` and the inference pieces under it: windows, tiles, receptive field,
checkpoint loading, frame folders and videos in and out, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vsrpp_dist.config import ModelConfig, config_to_dict
from vsrpp_dist.inference import upscale
from vsrpp_dist.data.windows import sliding_windows, window_indices
from vsrpp_dist.inference.clip_upscaler import ClipUpscaler
from vsrpp_dist.metrics import to_uint8
from vsrpp_dist.inference.device import time_cudnn_algorithms_per_shape
from vsrpp_dist.inference.loading import load_model
from vsrpp_dist.inference.tiles import tile_spans
from vsrpp_dist.model.receptive_field import receptive_radius
from vsrpp_dist.model.architecture import build_model
from vsrpp_dist.training.checkpoint import point_symlink
from vsrpp_dist.weights import WEIGHTS_FILE

from ..helpers import ROOT, TINY_MODEL, read_pngs, run, save_weights

LR_HW = (24, 30)
FRAMES = 7


def write_video(path: Path, frames: list[np.ndarray], rate=Fraction(30000, 1001)) -> Path:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def read_video(path: Path) -> tuple[list[np.ndarray], Fraction]:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return frames, Fraction(stream.average_rate)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return save_weights(tmp_path_factory.mktemp("weights") / WEIGHTS_FILE)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """One folder of 7 real-photo frames at 24x30 (the LR input of upscale)."""
    from vsrpp_dist.tools.demo_data import write_frame_folders

    root = tmp_path_factory.mktemp("clip")
    return write_frame_folders(root, sequences=1, frames=FRAMES, frame_hw=LR_HW, seed=3)[0]


@pytest.fixture(scope="module")
def clip_frames(clip) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)) for p in sorted(clip.glob("*.png"))]


@pytest.fixture(scope="module")
def clip_mp4(clip_frames, tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", clip_frames)


def reference_sr(weights: Path, frames: list[np.ndarray], index: int) -> np.ndarray:
    """Frame `index` restored directly with the model from its mirrored window, rounded to 8 bits."""
    loaded = load_model(weights, torch.device("cpu"))
    window = [torch.from_numpy(frames[i].copy()).permute(2, 0, 1) for i in window_indices(index, len(frames))]
    with torch.no_grad():
        sr = loaded.model(torch.stack(window)[None].float() / 255).clamp(0, 1)
    return to_uint8(sr)[0].permute(1, 2, 0).numpy()


# -- receptive field and tiles -----------------------------------------------------------------------


def test_receptive_radius_formula_for_the_shipped_sizes():
    assert receptive_radius(ModelConfig()) == 66  # default: 5/10/5 blocks
    assert receptive_radius(ModelConfig(channels=32, extract_blocks=2, propagation_blocks=3,
                                        reconstruction_blocks=2, upsample_channels=32)) == 26  # demo
    assert receptive_radius(ModelConfig(**TINY_MODEL)) == 14


@pytest.mark.parametrize("blocks", [(1, 1, 1), (0, 2, 2)])
def test_receptive_radius_is_exactly_the_gradient_support(blocks):
    """The LR pixels an output pixel depends on are where its gradient is non-zero; over the three HR
    pixels of one LR cell they reach exactly `radius` LR pixels on each side, so the formula is neither
    short (tiles would differ) nor loose (tiles would waste work)."""
    e, p, r = blocks
    cfg = ModelConfig(channels=4, extract_blocks=e, propagation_blocks=p, reconstruction_blocks=r, upsample_channels=4)
    radius = receptive_radius(cfg)
    torch.manual_seed(0)
    model = build_model(cfg).double().eval()
    size = 2 * radius + 5
    q = size // 2
    lr = torch.rand(1, 5, 3, size, size, dtype=torch.float64, requires_grad=True)
    sr = model(lr)
    rows, cols = set(), set()
    for a in range(3):
        for b in range(3):
            (grad,) = torch.autograd.grad(sr[0, :, 3 * q + a, 3 * q + b].sum(), lr, retain_graph=True)
            support = grad.abs().sum(dim=(0, 1, 2)).nonzero()
            rows.update(support[:, 0].tolist())
            cols.update(support[:, 1].tolist())
    assert (min(rows), max(rows)) == (q - radius, q + radius)
    assert (min(cols), max(cols)) == (q - radius, q + radius)


def test_tile_spans_cover_the_frame_with_uniform_inputs():
    for size, tile, pad in [(41, 7, 14), (53, 5, 3), (30, 11, 2), (10, 4, 20), (9, 9, 3), (100, 1, 0)]:
        spans = tile_spans(size, tile, pad)
        covered = [i for s in spans for i in range(s.core_start, s.core_end)]
        assert covered == list(range(size))
        assert len({s.in_end - s.in_start for s in spans}) == 1  # one shape: tiles batch, cuDNN tunes once
        for s in spans:
            assert 0 <= s.in_start <= s.core_start < s.core_end <= s.in_end <= size
            assert s.core_start - s.in_start >= pad or s.in_start == 0
            assert s.in_end - s.core_end >= pad or s.in_end == size
    assert tile_spans(20, 0, 5) == tile_spans(20, 25, 5) == [tile_spans(20, 0, 5)[0]]


def test_tiled_equals_untiled_at_odd_sizes(weights):
    device = torch.device("cpu")
    loaded = load_model(weights, device)
    torch.manual_seed(1)
    lr = torch.rand(2, 5, 3, 41, 53)
    whole = ClipUpscaler(loaded, device)(lr)
    assert whole.shape == (2, 3, 123, 159)
    for tile in (5, 7, 11):
        tiled = ClipUpscaler(loaded, device, tile=tile)(lr)
        assert (tiled - whole).abs().max().item() < 1e-5, tile
    # the overlap is what makes them equal: with almost none the tile borders show
    short = ClipUpscaler(loaded, device, tile=7)
    short.radius = 1
    assert (short(lr) - whole).abs().max().item() > 1e-4


# -- the per-frame cache -----------------------------------------------------------------------------


def stream_through(upscaler: ClipUpscaler, frames: torch.Tensor, batch: int, cached: bool) -> torch.Tensor:
    """Every frame of `frames` (N, 3, h, w) restored from its mirrored window, in batches, as the commands
    stream them."""
    out = []
    for windows in sliding_windows(range(len(frames)), batch):
        ids = [window for _, window in windows]
        lr = torch.stack([frames[window] for window in ids])
        out.append(upscaler(lr, ids if cached else None))
        if cached:  # a ring of the frames in flight (in every tile), not a store of the stream
            in_flight = {i for window in ids for i in window}
            regions = {region for region, _ in upscaler.cache.features}
            assert set(upscaler.cache.features) == {(r, i) for r in regions for i in in_flight}
    return torch.cat(out)


@pytest.mark.parametrize("alignment, lr_hw, tile", [
    ("implicit", (24, 30), 0), ("implicit", (36, 164), 8), ("implicit", (60, 124), 0),
    ("flow", (24, 30), 0), ("flow", (36, 164), 40), ("flow", (60, 124), 0)])
def test_cached_features_give_bit_identical_output(tmp_path, alignment, lr_hw, tile):
    """Each frame's features (and flows) computed once and reused by its five windows: the same output
    bit for bit as computing every window from scratch, whole and tiled, batched or not. 24x30 is small
    enough that PyTorch's CPU convolution would take another kernel for one frame alone (run_per_frame),
    60x124 is not."""
    extra = {} if alignment == "implicit" else dict(flow_channels=4, flow_levels=1, max_flow=1.0)
    loaded = load_model(save_weights(tmp_path / "w.pt", seed=2, alignment=alignment, **extra), torch.device("cpu"))
    torch.manual_seed(0)
    frames = torch.rand(8, 3, *lr_hw)
    for batch in (1, 3):
        scratch = stream_through(ClipUpscaler(loaded, torch.device("cpu"), tile=tile), frames, batch, cached=False)
        cached = stream_through(ClipUpscaler(loaded, torch.device("cpu"), tile=tile), frames, batch, cached=True)
        assert torch.equal(cached, scratch), (batch, (cached - scratch).abs().max().item())
    # and each frame of each tile was extracted once, not once per window
    upscaler = ClipUpscaler(loaded, torch.device("cpu"), tile=tile)
    stream_through(upscaler, frames, 2, cached=True)
    tiles = len({region for region, _ in upscaler.cache.features})
    assert (tiles > 1) == (tile > 0)
    assert upscaler.cache.frames_computed == len(frames) * tiles


def test_tiled_cache_over_its_budget_recomputes_with_a_note(weights, capsys):
    torch.manual_seed(0)
    frames = torch.rand(6, 3, 36, 164)
    loaded = load_model(weights, torch.device("cpu"))
    reference = stream_through(ClipUpscaler(loaded, torch.device("cpu"), tile=8), frames, 1, cached=False)
    small = ClipUpscaler(loaded, torch.device("cpu"), tile=8, cache_bytes=1000)
    out = []
    for windows in sliding_windows(range(len(frames)), 1):
        ids = [window for _, window in windows]
        out.append(small(torch.stack([frames[window] for window in ids]), ids))
        assert not small.cache.features
    assert torch.equal(torch.cat(out), reference)
    assert capsys.readouterr().err.count("--cache-gb") == 1


# -- windows -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 2, 3])
def test_sliding_windows_match_validation_and_read_ahead_little(batch):
    for n in range(0, 9):
        read = []

        def frames():
            for i in range(n):
                read.append(i)
                yield i

        got = []
        for windows in sliding_windows(frames(), batch):
            assert len(windows) <= batch
            # never more than the window of the last centre in the batch (+1 to notice the end)
            assert len(read) <= windows[-1][0] + 3
            got += windows
        assert got == [(c, window_indices(c, n)) for c in range(n)]


# -- the command -------------------------------------------------------------------------------------


def test_frame_folder_to_png_folder(weights, clip, clip_frames, tmp_path, capsys):
    out = tmp_path / "sr"
    rc, stdout, _ = run(capsys, upscale, "--checkpoint", weights, "--input", clip, "--output", out, "--batch", 3,
                        "--quiet")
    assert rc == 0, stdout
    frames = read_pngs(out)
    assert list(frames) == sorted(p.name for p in clip.glob("*.png"))  # input names kept
    assert all(f.shape == (72, 90, 3) and f.dtype == np.uint8 for f in frames.values())
    assert f"upscaled {FRAMES} frames 30x24 -> 90x72" in stdout
    names = list(frames)
    for index in (0, 3, FRAMES - 1):  # the mirrored ends and the middle
        np.testing.assert_array_equal(frames[names[index]], reference_sr(weights, clip_frames, index))


def test_tiled_command_matches_whole_frames(weights, tmp_path, capsys):
    from vsrpp_dist.tools.demo_data import write_frame_folders

    # odd sizes, and large enough for tiles of 7 plus the radius (14) of context on both sides
    clip = write_frame_folders(tmp_path / "in", sequences=1, frames=5, frame_hw=(45, 57), seed=4)[0]
    assert run(capsys, upscale, "--checkpoint", weights, "--input", clip, "--output", tmp_path / "a", "--quiet")[0] == 0
    assert run(capsys, upscale, "--checkpoint", weights, "--input", clip, "--output", tmp_path / "b", "--tile", 7,
               "--batch", 2, "--quiet")[0] == 0
    a, b = read_pngs(tmp_path / "a"), read_pngs(tmp_path / "b")
    assert a.keys() == b.keys()
    # 8-bit values may flip where the float sits on a rounding boundary; nothing more
    assert max(np.abs(a[k].astype(int) - b[k].astype(int)).max() for k in a) <= 1


def test_mp4_to_frames_and_mp4_to_mp4_keeps_count_and_rate(weights, clip_mp4, tmp_path, capsys):
    rc, _, _ = run(capsys, upscale, "--checkpoint", weights, "--input", clip_mp4, "--output", tmp_path / "frames",
                   "--quiet")
    assert rc == 0
    frames = read_pngs(tmp_path / "frames")
    assert list(frames) == [f"{i:08d}.png" for i in range(FRAMES)]
    assert all(f.shape == (72, 90, 3) for f in frames.values())
    decoded, _ = read_video(clip_mp4)
    np.testing.assert_array_equal(frames["00000000.png"], reference_sr(weights, decoded, 0))

    out = tmp_path / "x3.mp4"
    rc, _, _ = run(capsys, upscale, "--checkpoint", weights, "--input", clip_mp4, "--output", out, "--quiet")
    assert rc == 0
    video, rate = read_video(out)
    assert rate == Fraction(30000, 1001)
    assert len(video) == FRAMES and video[0].shape == (72, 90, 3)
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]
    # crf 16 4:2:0 H.264 of the same frames (noisy ones: the model is untrained): close, not equal
    mse = np.mean((video[0].astype(float) - frames["00000000.png"]) ** 2)
    assert 10 * np.log10(255**2 / mse) > 30


def write_clip_with_audio(path: Path, frames: list[np.ndarray], stamps_ms: list[int], rotation: int) -> Path:
    """H.264 at variable rate (timestamps in ms), a display rotation, BT.709 tags, and an AAC tone."""
    import av

    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=25)
        video.height, video.width = frames[0].shape[:2]
        video.pix_fmt = "yuv420p"
        video.time_base = video.codec_context.time_base = Fraction(1, 1000)
        ctx = video.codec_context
        ctx.color_primaries = ctx.color_trc = ctx.colorspace = 1
        video.set_display_rotation(rotation)
        audio = container.add_stream("aac", rate=16000)
        audio.layout = "mono"
        for frame, ms in zip(frames, stamps_ms):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts, picture.time_base = ms, Fraction(1, 1000)
            container.mux(video.encode(picture))
        container.mux(video.encode())
        samples = 16 * (stamps_ms[-1] + 100)
        tone = (0.3 * np.sin(np.arange(samples) * 2 * np.pi * 440 / 16000)).astype(np.float32)
        for start in range(0, samples, 1024):
            chunk = av.AudioFrame.from_ndarray(tone[None, start:start + 1024], format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts, chunk.time_base = 16000, start, Fraction(1, 16000)
            container.mux(audio.encode(chunk))
        container.mux(audio.encode())
    return path


def media_of(path: Path) -> dict:
    import av

    with av.open(str(path)) as container:
        video = container.streams.video[0]
        ctx = video.codec_context
        rotation = next(container.decode(video)).rotation
        container.seek(0)
        packets = [p for p in container.demux() if p.dts is not None]
        return {
            "audio": [(bytes(p), p.pts * p.time_base, p.duration * p.time_base) for p in packets
                      if p.stream.type == "audio"],
            "video_times": sorted(p.pts * p.time_base for p in packets if p.stream.type == "video"),
            "rotation": rotation,
            "colour": (int(ctx.color_primaries), int(ctx.color_trc), int(ctx.colorspace)),
        }


def test_video_keeps_audio_timestamps_rotation_and_colour(weights, clip_frames, tmp_path, capsys):
    stamps_ms = [0, 40, 100, 133, 200, 240, 300]  # variable rate
    source = write_clip_with_audio(tmp_path / "phone.mp4", clip_frames, stamps_ms, rotation=90)
    src = media_of(source)
    assert len(src["audio"]) > 5 and src["rotation"] == 90

    out = tmp_path / "x3.mp4"
    rc, _, err = run(capsys, upscale, "--checkpoint", weights, "--input", source, "--output", out, "--quiet")
    assert rc == 0, err
    got = media_of(out)
    assert got["audio"] == src["audio"]  # every packet: same bytes, same timestamps
    assert got["video_times"] == src["video_times"] == [Fraction(ms, 1000) for ms in stamps_ms]
    assert got["rotation"] == 90 and got["colour"] == (1, 1, 1)

    rc, _, _ = run(capsys, upscale, "--checkpoint", weights, "--input", source, "--output", tmp_path / "mute.mp4",
                   "--no-audio", "--quiet")
    assert rc == 0 and media_of(tmp_path / "mute.mp4")["audio"] == []
    # --limit: the audio ends where the video does
    rc, _, _ = run(capsys, upscale, "--checkpoint", weights, "--input", source, "--output", tmp_path / "cut.mp4",
                   "--limit", 4, "--quiet")
    cut = media_of(tmp_path / "cut.mp4")
    assert rc == 0 and len(cut["video_times"]) == 4
    assert cut["audio"] == [p for p in src["audio"] if p[1] < Fraction(stamps_ms[4], 1000)]
    # --fps retimes the video and so drops the audio, with a note
    rc, _, err = run(capsys, upscale, "--checkpoint", weights, "--input", source, "--output", tmp_path / "fps.mp4",
                     "--fps", 10, "--quiet")
    assert rc == 0 and "audio is not copied" in err
    assert media_of(tmp_path / "fps.mp4")["audio"] == []


def test_untagged_source_gives_bt709_converted_as_tagged(weights, clip, clip_frames, tmp_path, capsys):
    """A frame folder has no colour tags: the output is tagged BT.709 and converted with that matrix, so
    a decoder that honours the tag gets the model's RGB back (up to the codec's loss)."""
    out = tmp_path / "x3.mp4"
    rc, _, _ = run(capsys, upscale, "--checkpoint", weights, "--input", clip, "--output", out, "--crf", 0, "--quiet")
    assert rc == 0
    assert media_of(out)["colour"] == (1, 1, 1)
    video, _ = read_video(out)
    rc, _, _ = run(capsys, upscale, "--checkpoint", weights, "--input", clip, "--output", tmp_path / "png", "--quiet")
    first = read_pngs(tmp_path / "png")[sorted(p.name for p in clip.glob("*.png"))[0]]
    # lossless H.264 of 4:2:0 chroma: only the chroma subsampling and rounding differ
    assert np.abs(video[0].astype(int) - first).mean() < 4


def test_frame_folder_to_video_uses_fps(weights, clip, tmp_path, capsys):
    out = tmp_path / "x3.mkv"
    rc, _, _ = run(capsys, upscale, "--checkpoint", weights, "--input", clip, "--output", out, "--fps", "12",
                   "--limit", 5, "--quiet")
    assert rc == 0
    video, rate = read_video(out)
    assert len(video) == 5 and rate == 12


def test_checkpoint_folder_and_symlink_work(weights, clip, tmp_path, capsys):
    run_dir = tmp_path / "run"
    folder = run_dir / "checkpoints" / "final-00000007"
    folder.mkdir(parents=True)
    (folder / WEIGHTS_FILE).write_bytes(weights.read_bytes())
    (folder / "meta.json").write_text(json.dumps({"format": "vsrpp-checkpoint", "step": 7}))
    point_symlink(run_dir / "checkpoint_best", folder)
    outputs = {}
    for name, checkpoint in (("file", weights), ("folder", folder), ("link", run_dir / "checkpoint_best")):
        rc, _, err = run(capsys, upscale, "--checkpoint", checkpoint, "--input", clip, "--output", tmp_path / name,
                         "--limit", 5, "--quiet")
        assert rc == 0, err
        assert "weights of step 7" in err
        outputs[name] = read_pngs(tmp_path / name)
    for name in ("folder", "link"):
        for key, frame in outputs["file"].items():
            np.testing.assert_array_equal(outputs[name][key], frame)


# -- bad input ---------------------------------------------------------------------------------------


def _bad_cases(tmp: Path, weights: Path, clip: Path) -> dict[str, tuple[list, str]]:
    wrong_fit = dict(config_to_dict(ModelConfig(**TINY_MODEL)), channels=16)
    save_weights(tmp / "wrong_fit.pt", model_config=wrong_fit)
    save_weights(tmp / "x4.pt", model_config=dict(config_to_dict(ModelConfig(**TINY_MODEL)), scale=4))
    (tmp / "empty").mkdir()
    (tmp / "empty" / "notes.txt").write_text("no frames here")
    mixed = tmp / "mixed"
    mixed.mkdir()
    for i, size in enumerate([(30, 24), (30, 24), (33, 24), (30, 24), (30, 24)]):
        Image.new("RGB", size).save(mixed / f"{i:03d}.png")
    two = tmp / "two"
    for name in ("a", "b"):
        (two / name).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (30, 24)).save(two / name / f"{i}.png")
    (tmp / "taken.mp4").write_bytes(b"the user's video")
    (tmp / "not_a_video.mp4").write_bytes(b"text, not H.264")
    save_weights(tmp / "edvr.pt", model_config=dict(config_to_dict(ModelConfig(**TINY_MODEL)), name="EDVR"))
    # flow weights under a config that says implicit
    save_weights(tmp / "flow_as_implicit.pt", alignment="flow", model_config=config_to_dict(ModelConfig(**TINY_MODEL)))
    base = ["--checkpoint", weights, "--input", clip, "--output", tmp / "out", "--quiet"]

    def replace(flag, value):
        args = list(base)
        args[args.index(flag) + 1] = value
        return args

    return {
        "missing checkpoint": (replace("--checkpoint", tmp / "nope"), "nope: no such checkpoint"),
        "weights do not fit config": (replace("--checkpoint", tmp / "wrong_fit.pt"), "do not fit its model_config"),
        "another scale": (replace("--checkpoint", tmp / "x4.pt"), "model.scale: 4 is not one of 3"),
        "missing input": (replace("--input", tmp / "nothing"), "nothing: no such file or folder"),
        "folder without frames": (replace("--input", tmp / "empty"), "empty: no image frames"),
        "mixed frame sizes": (replace("--input", mixed), "002.png: frame is 33x24"),
        "several sequences": (replace("--input", two), "holds 2 sequences"),
        "existing video output": (replace("--output", tmp / "taken.mp4"), "taken.mp4: exists"),
        "image file as output": (replace("--output", tmp / "out.png"), "give a folder for PNG frames or a video"),
        "bad tile": (base + ["--tile", "-3"], "--tile: -3 is below the minimum 0"),
        "unreadable video": (replace("--input", tmp / "not_a_video.mp4"), "not_a_video.mp4: cannot read this video"),
        "another architecture": (replace("--checkpoint", tmp / "edvr.pt"), "'EDVR' is not one of VSRBidirectional_3x"),
        "another alignment": (replace("--checkpoint", tmp / "flow_as_implicit.pt"),
                              "weights are of a model with alignment flow, but its model_config says "
                              "model.alignment=implicit"),
        "suffix without a muxer": (replace("--output", tmp / "out.flv"), "out.flv: upscale writes videos as .mp4"),
        "bad cache size": (base + ["--cache-gb", "-1"], "--cache-gb: -1: must be 0 or more"),
    }


def test_bad_input_is_one_line_and_exit_2(weights, clip, tmp_path, capsys):
    for name, (argv, expected) in _bad_cases(tmp_path, weights, clip).items():
        try:
            rc, _, err = run(capsys, upscale, *argv)
        except SystemExit as stop:  # argparse's own errors exit from inside main
            rc, err = stop.code, capsys.readouterr().err
        lines = err.strip().splitlines()
        assert rc == 2, (name, err)
        assert len(lines) == 1 and expected in lines[0], (name, err)
    assert (tmp_path / "taken.mp4").read_bytes() == b"the user's video"
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.flv").exists()


@pytest.fixture
def tiny_disk(tmp_path):
    """A real filesystem of a few pages (tmpfs; skipped where mounting is not allowed)."""
    point = tmp_path / "tinyfs"
    point.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(point)], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        pytest.skip(f"cannot mount a tmpfs here: {err}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    yield point
    subprocess.run(["umount", "-l", str(point)], capture_output=True)


def test_full_disk_during_encode_is_one_line_and_leaves_no_partial_file(weights, clip_mp4, tiny_disk, capsys):
    argv = ["--checkpoint", weights, "--input", clip_mp4, "--crf", 0, "--quiet"]
    rc, _, err = run(capsys, upscale, *argv, "--output", tiny_disk / "x3.mp4")
    assert rc == 2
    assert err.strip().splitlines()[-1].endswith("No space left on device); the incomplete video was removed, "
                                                 "nothing is left under that name")
    assert "Traceback" not in err and list(tiny_disk.iterdir()) == []
    # PNG frames: the complete ones stay, a truncated one does not pass for a frame
    rc, _, err = run(capsys, upscale, *argv, "--output", tiny_disk / "frames")
    assert rc == 2 and "No space left on device" in err
    for png in (tiny_disk / "frames").glob("*.png"):
        assert Image.open(png).load() is not None and Image.open(png).size == (90, 72)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_clear_error(weights, clip, tmp_path, capsys):
    rc, _, err = run(capsys, upscale, "--checkpoint", weights, "--input", clip, "--output", tmp_path / "o",
                     "--device", "cuda", "--quiet")
    assert rc == 2 and "no CUDA GPU is available" in err


def test_module_entry_point_reports_one_line(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "vsrpp_dist.upscale", "--checkpoint", str(tmp_path / "none"),
                           "--input", str(tmp_path), "--output", str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"python -m vsrpp_dist.upscale: error: {tmp_path}: no image frames "
                                                f"(.png, .jpg, .jpeg, .bmp, .webp, .tif, .tiff) or videos "
                                                f"(.mp4, .mkv, .avi, .mov, .webm) in it or below it"]


def test_help_names_every_option(capsys):
    with pytest.raises(SystemExit) as stop:
        upscale.main(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    for option in ("--checkpoint", "--input", "--output", "--batch", "--tile", "--device", "--amp", "--crf", "--fps",
                   "--limit", "--overwrite", "--quiet"):
        assert option in text


# -- GPU -----------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_matches_cpu_and_amp_runs(weights):
    torch.manual_seed(2)
    lr = torch.rand(2, 5, 3, 40, 52)
    cpu = ClipUpscaler(load_model(weights, torch.device("cpu")), torch.device("cpu"))(lr)
    gpu_device = torch.device("cuda")
    loaded = load_model(weights, gpu_device)
    gpu = ClipUpscaler(loaded, gpu_device, tile=9)(lr).cpu()
    assert (gpu - cpu).abs().max().item() < 2e-3  # TF32 convolutions
    amp = ClipUpscaler(loaded, gpu_device, amp=True)(lr).cpu()
    assert amp.shape == cpu.shape and (amp - cpu).abs().mean().item() < 1e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_cache_compile_amp_and_batches_agree(weights):
    """What a GPU run uses together: the cache, several windows per forward, torch.compile and bf16."""
    torch.manual_seed(3)
    frames = torch.rand(7, 3, 40, 52)
    cpu = stream_through(ClipUpscaler(load_model(weights, torch.device("cpu")), torch.device("cpu")), frames, 1,
                         cached=False)
    gpu_device = torch.device("cuda")
    loaded = load_model(weights, gpu_device)
    fast = stream_through(ClipUpscaler(loaded, gpu_device, compile=True), frames, 3, cached=True).cpu()
    assert (fast - cpu).abs().max().item() < 2e-3
    amp = stream_through(ClipUpscaler(loaded, gpu_device, amp=True, compile=True), frames, 3, cached=True).cpu()
    assert (amp - cpu).abs().mean().item() < 1e-2


def test_compile_that_fails_falls_back_to_eager_with_one_note(weights, capsys, monkeypatch):
    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("Compiler: cc not found\nmore detail")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    torch.manual_seed(0)
    frames = torch.rand(6, 3, *LR_HW)
    loaded = load_model(weights, torch.device("cpu"))
    eager = stream_through(ClipUpscaler(loaded, torch.device("cpu")), frames, 2, cached=True)
    compiled = stream_through(ClipUpscaler(loaded, torch.device("cpu"), compile=True), frames, 2, cached=True)
    assert torch.equal(compiled, eager)
    notes = [line for line in capsys.readouterr().err.splitlines() if "--compile" in line]
    # one per compiled piece that ran (feature extractor, propagation/reconstruction), said once
    assert len(notes) == 2 and all("cc not found" in n and "running it eagerly" in n for n in notes)


def test_bench_upscale_counts_the_extractor_once_per_frame(tmp_path, capsys):
    """The cache saves exactly four of the five feature extractions per frame (implicit: nothing else
    is shared; 96x80 is large enough that no frame is run as a pair with itself), and the bench says
    the outputs are bit-identical."""
    from vsrpp_dist.tools import bench

    out = tmp_path / "upscale.json"
    rc = bench.main(["upscale", "--config", str(ROOT / "configs" / "tiny.yaml"), "--size", "96x80", "--frames", "6",
                     "--rounds", "1", "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["bit_identical"] is True
    c = ModelConfig(**TINY_MODEL)
    extractor = 2 * 9 * (3 * c.channels + 2 * c.extract_blocks * c.channels**2) * 96 * 80
    saved = (result["scratch"]["gflops_per_frame"] - result["cached"]["gflops_per_frame"]) * 1e9
    assert saved == pytest.approx(4 * extractor, rel=1e-6)
    assert "cached/scratch" in capsys.readouterr().out


def test_cudnn_algorithm_timing_is_set_by_the_command_for_a_gpu_run_not_by_each_upscaler(tmp_path):
    """cudnn.benchmark is process-wide: the command sets it once where it applies its device (a GPU
    run only); building an upscaler (evaluate builds one per model) leaves it alone."""
    loaded = load_model(save_weights(tmp_path / "w.pt"), torch.device("cpu"))
    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        ClipUpscaler(loaded, torch.device("cuda"))
        assert not torch.backends.cudnn.benchmark
        time_cudnn_algorithms_per_shape(torch.device("cpu"))
        assert not torch.backends.cudnn.benchmark
        time_cudnn_algorithms_per_shape(torch.device("cuda"))
        assert torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.benchmark = before
