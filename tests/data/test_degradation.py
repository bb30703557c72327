"""The realistic degradation: each stage deterministic under a seed and within its range, real codec
output, bounded frame-to-frame drift, GT/3 shapes, bad values refused in one line, and exact resume of
a run that uses it (codec stage on)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from vsrpp_dist.config import ConfigError, load_config
from vsrpp_dist.data import degradation as D
from vsrpp_dist.data import realistic as R
from vsrpp_dist.metrics import psnr

from ..helpers import make_config, read_scalars, sigterm_after_step, train

REALISTIC = ("degradation.kind=realistic",)


def realistic(*overrides):
    return D.build_degradation(load_config(None, [*REALISTIC, *overrides]).degradation)


def smooth_frames(frames=5, size=96, seed=0) -> torch.Tensor:
    """Natural-looking content: low-frequency colour fields moving a little each frame."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, 6, 6, generator=gen)
    big = torch.nn.functional.interpolate(base, size=(size + 2 * frames, size + 2 * frames), mode="bicubic",
                                          align_corners=False).clamp(0, 1)[0]
    return torch.stack([big[:, t:t + size, t:t + size] for t in range(frames)])


def batch_of(degradation, clips: int, frames=5, seed=0) -> dict[str, torch.Tensor]:
    plans = [degradation.draw(np.random.default_rng([seed, i]), frames) for i in range(clips)]
    return {k: torch.stack([p[k] for p in plans]) for k in plans[0]}


# -- draws -------------------------------------------------------------------------------------------


def test_the_same_seed_draws_the_same_clip_and_another_seed_another():
    d = realistic()
    a = d.draw(np.random.default_rng(5), 5)
    b = d.draw(np.random.default_rng(5), 5)
    c = d.draw(np.random.default_rng(6), 5)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_drawn_values_lie_in_their_ranges_and_drift_boundedly():
    cfg = load_config(None, [*REALISTIC]).degradation
    d = D.build_degradation(cfg)
    seen_gauss = seen_jpeg = 0
    for seed in range(60):
        first, second, *_ = R._unpack({k: v.unsqueeze(0) for k, v in d.draw(np.random.default_rng(seed), 8).items()}, 0)
        for draw, order in ((first, cfg.first), (second, cfg.second)):
            assert order.resize.scale[0] <= draw.resize_scale <= order.resize.scale[1]
            if draw.noise == 1:
                seen_gauss += 1
                low, high = order.noise.gaussian_sigma
                assert ((draw.noise_level >= low) & (draw.noise_level <= high)).all()
                assert np.abs(np.diff(draw.noise_level)).max() <= order.noise.sigma_drift + 1e-12
            if len(draw.jpeg_quality):
                seen_jpeg += 1
                q = draw.jpeg_quality
                assert ((q >= order.jpeg.quality[0]) & (q <= order.jpeg.quality[1])).all()
                assert np.abs(np.diff(q)).max() <= order.jpeg.quality_drift + 1  # rounding of the walk
            if draw.codec >= 0:
                assert order.video.bitrate[0] <= draw.rate <= order.video.bitrate[1]
            if draw.blur:  # every frame's kernel is normalised; they drift, they are not all one kernel
                sums = draw.kernels.sum((-1, -2))
                assert torch.allclose(sums, torch.ones_like(sums), atol=1e-4)
    assert seen_gauss > 10 and seen_jpeg > 60


def test_the_blur_parameters_walk_instead_of_jumping_or_standing_still():
    rng = np.random.default_rng(0)
    walk = R._walk(rng, 200, 0.2, 3.0, 0.02)
    steps = np.abs(np.diff(walk))
    assert steps.max() <= 0.02 + 1e-12 and steps.mean() > 0.003
    assert ((walk >= 0.2) & (walk <= 3.0)).all()


# -- stages ------------------------------------------------------------------------------------------


def test_jpeg_at_q30_is_further_from_the_frame_than_at_q95():
    frames = R.to_uint8_hwc(smooth_frames(size=64) * 0.6 + 0.4 * torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    clean = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    low = torch.from_numpy(R.jpeg(frames, [30] * 5)).permute(0, 3, 1, 2).float() / 255
    high = torch.from_numpy(R.jpeg(frames, [95] * 5)).permute(0, 3, 1, 2).float() / 255
    assert psnr(low, clean).mean() + 3 < psnr(high, clean).mean()
    assert np.array_equal(R.jpeg(frames, [30] * 5), R.jpeg(frames, [30] * 5))


def block_edge_ratio(error: torch.Tensor, block: int) -> float:
    """Mean step of the error field across block edges over the mean step inside blocks (1: no blocks)."""
    sx = (error[:, :, 1:] - error[:, :, :-1]).abs().mean((0, 1))
    sy = (error[:, 1:] - error[:, :-1]).abs().mean((0, 2))
    steps = (sx + sy) / 2
    return float(steps[block - 1::block].mean() / torch.cat([steps[i::block] for i in range(block - 1)]).mean())


@pytest.mark.parametrize("codec, block, min_ratio", [("mpeg4", 8, 1.8), ("libx264", 16, 1.4)])
def test_the_codec_stage_is_a_real_codec_with_visible_blocks(codec, block, min_ratio):
    """Low bitrate on smooth content: the error jumps at the codec's block edges (mpeg4: 8x8 DCT blocks;
    x264 deblocks, yet its 16x16 macroblocks still show), and more bits bring the frames closer."""
    x = smooth_frames(frames=5, size=96)
    planes = R.rgb_to_yuv420(x)
    out = R.video_codec(planes, codec, "bitrate", 5e3)
    assert out.shape == planes.shape
    assert np.array_equal(out, R.video_codec(planes, codec, "bitrate", 5e3))  # the same bytes every run
    assert not np.array_equal(out, planes)
    luma_error = torch.from_numpy(out[:, :96].astype(np.float64) - planes[:, :96].astype(np.float64))
    assert block_edge_ratio(luma_error[:1], block) > min_ratio  # the intra frame (the rest predict from it)
    colour_conversion_only = (R.yuv420_to_rgb(planes, x) - x).abs().mean()
    assert (R.yuv420_to_rgb(out, x) - x).abs().mean() > 2 * colour_conversion_only
    # with texture to spend bits on, fewer bits bring the frames further from the input
    textured = (0.85 * x + 0.15 * torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    textured_planes = R.rgb_to_yuv420(textured)
    errors = [(R.yuv420_to_rgb(R.video_codec(textured_planes, codec, "bitrate", rate), x) - textured).abs().mean()
              for rate in (1e4, 4e5)]
    assert errors[0] > errors[1]


def test_noise_is_seeded_per_frame_and_grey_noise_is_the_same_in_every_channel():
    x = torch.full((3, 3, 32, 32), 0.5)
    a = R.add_noise(x, 1, False, np.array([5.0, 10.0, 20.0]), seed=3)
    assert torch.equal(a, R.add_noise(x, 1, False, np.array([5.0, 10.0, 20.0]), seed=3))
    spread = (a - x).std((1, 2, 3))
    assert spread[0] < spread[1] < spread[2]  # each frame at its own level
    grey = R.add_noise(x, 1, True, np.array([10.0] * 3), seed=3) - x
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])
    shot = R.add_noise(x, 2, False, np.array([1.0] * 3), seed=4)
    assert 0 < (shot - x).abs().mean() < 0.1


def test_blur_uses_each_frames_own_kernel():
    x = torch.rand(2, 3, 24, 24)
    sharp = torch.zeros(2, R.MAX_KERNEL_SIZE, R.MAX_KERNEL_SIZE)
    sharp[:, R.MAX_KERNEL_SIZE // 2, R.MAX_KERNEL_SIZE // 2] = 1
    wide = R._pad_kernel(R.blur_kernel("iso", 21, 3.0, 3.0, 0.0, 1.0, 1.0))
    out = R.blur(x, torch.stack([sharp[0], wide]))
    assert torch.allclose(out[0], x[0], atol=1e-6)  # the delta kernel keeps frame 0
    assert out[1].std() < 0.5 * x[1].std()  # the wide one smooths frame 1


@pytest.mark.parametrize("size", [(48, 48), (51, 72), (96, 33 * 3)])
def test_the_output_is_always_gt_over_3_and_8_bit(size):
    d = realistic()
    h, w = size
    gt = torch.rand(3, 5, 3, h, w, generator=torch.Generator().manual_seed(h))
    gt0 = gt.clone()
    lq = d.apply(gt, batch_of(d, 3))
    assert lq.shape == (3, 5, 3, h // 3, w // 3)
    assert torch.equal(gt, gt0)  # the GT the loss needs is untouched
    assert torch.equal(lq, (lq * 255).round() / 255) and lq.min() >= 0 and lq.max() <= 1
    assert torch.equal(lq, d.apply(gt, batch_of(d, 3)))  # the same draws, the same clip


def test_a_clip_looks_like_one_video_not_five_unrelated_degradations():
    """With every stage on, neighbouring frames of a degraded clip stay closer to each other than frames
    of clips degraded with independent draws."""
    d = realistic("degradation.first.noise.prob=0", "degradation.second.noise.prob=0")
    gt = smooth_frames(frames=5, size=96).expand(1, -1, -1, -1, -1).contiguous()
    coherent = d.apply(gt, batch_of(d, 1, seed=3))[0]
    independent = torch.stack([d.apply(gt[:, t:t + 1].expand(1, 5, -1, -1, -1).contiguous(),
                                       batch_of(d, 1, seed=100 + t))[0, 0] for t in range(5)])
    def flicker(clip):
        return (clip[1:] - clip[:-1]).abs().mean()
    assert flicker(coherent) < flicker(independent)


def test_bicubic_stays_bit_for_bit_the_matlab_resize():
    from vsrpp_dist.imresize import downscale

    gt = torch.rand(2, 5, 3, 48, 48)
    bicubic = D.build_degradation(load_config(None, []).degradation)
    assert bicubic.draw(np.random.default_rng(0), 5) == {}
    assert torch.equal(bicubic.apply(gt, {}), downscale(gt.flatten(0, 1)).unflatten(0, (2, 5)))


# -- one protocol -----------------------------------------------------------------------------------


def variants():
    return {"bicubic": D.BicubicDegradation(), "realistic": realistic(), "real LR": D.RealLowRes()}


@pytest.mark.parametrize("name", ["bicubic", "realistic", "real LR"])
def test_a_sequence_gets_the_input_its_clip_would_get_in_a_training_batch(name):
    """Validation and evaluate make a sequence's input as the step makes a batch's: the same frames from
    the same draw (a realistic sequence draws from (seed, index)), 8-bit, GT/3, on the host."""
    d = variants()[name]
    gt = (smooth_frames(frames=7, size=48) * 255).round().to(torch.uint8)
    lr = torch.randint(0, 256, (7, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    made = list(d.sequence(zip(gt, lr), seed=3, index=2, device=torch.device("cpu")))
    assert [torch.equal(g, frame) for (g, _), frame in zip(made, gt)] == [True] * 7
    lq = torch.stack([x for _, x in made])
    assert lq.dtype == torch.uint8 and lq.shape == (7, 3, 16, 16)
    batch = {"gt": gt.unsqueeze(0), "lr": lr.unsqueeze(0),
             **{k: v.unsqueeze(0) for k, v in d.draw(np.random.default_rng([3, 2]), 7).items()}}
    gt_float, from_batch = d.model_input(batch)
    assert torch.equal(gt_float, gt.unsqueeze(0).float() / 255)
    assert torch.equal(D.to_uint8(from_batch[0]), lq)
    if name == "real LR":
        assert torch.equal(lq, lr)


@pytest.mark.parametrize("name", ["bicubic", "realistic", "real LR"])
def test_a_synthetic_batch_is_shaped_as_the_streams(name):
    """What auto-tune's probe and `bench step` feed the step: the stream's fields for this variant."""
    d = variants()[name]
    gt = torch.randint(0, 256, (2, 5, 3, 48, 48), dtype=torch.uint8)
    batch = d.synthetic_batch(gt, np.random.default_rng(0))
    assert set(batch) == {"gt", *d.draw(np.random.default_rng(0), 5)} | ({"lr"} if name == "real LR" else set())
    gt_float, lq = d.model_input(batch)
    assert gt_float.shape == (2, 5, 3, 48, 48) and lq.shape == (2, 5, 3, 16, 16)
    assert torch.equal(lq, (lq * 255).round() / 255)


def test_no_caller_asks_which_degradation_it_holds():
    """The variants answer for themselves: outside data/degradation.py no module compares a degradation
    kind, and none reaches for a degradation's kind."""
    from pathlib import Path

    import vsrpp_dist

    package = Path(vsrpp_dist.__file__).parent
    comparing = re.compile(r"""kind\s*(==|!=)\s*["'](bicubic|realistic)["']""")
    reaching = re.compile(r"(?<!cfg\.)degradation\.kind\b(?!=)")  # the config's value may be described
    found = [f"{path.relative_to(package)}:{n}: {line.strip()}"
             for path in sorted(package.rglob("*.py")) if path.name != "degradation.py"
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if comparing.search(line) or reaching.search(line)]
    assert found == []


def test_the_realistic_variant_pickles_after_its_thread_pool_exists():
    """Auto-tune's probe may apply it on a GPU (which starts its thread pool) before the loader's workers
    receive it inside the stream: under spawn or forkserver it is pickled then, without the pool."""
    import pickle
    from concurrent.futures import ThreadPoolExecutor

    d = realistic()
    d._pool = ThreadPoolExecutor(max_workers=1)
    copy = pickle.loads(pickle.dumps(d))
    assert copy._pool is None and d._pool is not None
    a, b = (x.draw(np.random.default_rng(1), 5) for x in (d, copy))
    assert all(torch.equal(a[k], b[k]) for k in a)
    d._pool.shutdown()


# -- bad values --------------------------------------------------------------------------------------


@pytest.mark.parametrize("override, words", [
    ("degradation.first.blur.sigma=[-1,2]", "degradation.first.blur.sigma: -1.0 is below the minimum"),
    ("degradation.second.jpeg.quality=[20,101]", "degradation.second.jpeg.quality: 101 is above the maximum 100"),
    ("degradation.first.jpeg.quality=[0,90]", "degradation.first.jpeg.quality: 0 is below the minimum 1"),
    ("degradation.first.video.codecs=vp9", "degradation.first.video.codecs: 'vp9' is not one of libx264, mpeg4"),
    ("degradation.kind=blurry", "degradation.kind: 'blurry' is not one of bicubic, realistic"),
    ("degradation.first.noise.gaussian_sigma=[30,1]", "low end above its high end"),
])
def test_out_of_range_values_are_refused_in_one_line(override, words):
    with pytest.raises(ConfigError) as caught:
        load_config(None, [*REALISTIC, override])
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_a_codec_the_installed_pyav_lacks_is_refused_before_any_work(monkeypatch):
    import av

    real = av.codec.Codec

    def without_mpeg4(name, mode="r"):
        if name == "mpeg4":
            raise av.codec.codec.UnknownCodecError(name)
        return real(name, mode)

    monkeypatch.setattr(av.codec, "Codec", without_mpeg4)
    with pytest.raises(ConfigError, match=r"degradation\.first\.video\.codecs: the installed PyAV .* no mpeg4 encoder"):
        realistic()


# -- in training -------------------------------------------------------------------------------------


def test_a_realistic_run_resumes_exactly_with_the_codec_on(train_shards, val_shards, tmp_path):
    """Stopped by SIGTERM at step 3 of 6 and resumed: every step's loss and the final weights equal an
    uninterrupted run's, so the degraded clips were the same; validation scores a fixed degraded set."""
    settings = (*REALISTIC, "degradation.first.video.prob=1", "degradation.second.video.prob=1",
                "train.total_steps=6", "validation.every=3", "train.log_every=1", "checkpoint.rolling_every=0",
                "checkpoint.regular_every=0")
    straight, code = train(make_config(tmp_path / "straight", train_shards, val_shards, *settings))
    assert code == 0
    interrupted = tmp_path / "interrupted"
    _, code = train(make_config(interrupted, train_shards, val_shards, *settings), patch=sigterm_after_step(3))
    assert code == 143
    from vsrpp_dist.training.run_dir import StartRequest

    resumed, code = train(make_config(interrupted, train_shards, val_shards, *settings), StartRequest(resume="latest"))
    assert code == 0
    assert read_scalars(interrupted, "Loss/Total") == read_scalars(tmp_path / "straight", "Loss/Total")
    a = straight.accelerator.unwrap_model(straight.model).state_dict()
    b = resumed.accelerator.unwrap_model(resumed.model).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the bicubic baseline of a realistic validation set is far below the clean one's
    bicubic_realistic = read_scalars(tmp_path / "straight", "Metrics/LR_PSNR")
    clean, _ = train(make_config(tmp_path / "clean", train_shards, val_shards, "train.total_steps=3",
                                 "validation.every=3"))
    assert max(bicubic_realistic.values()) < clean.state.last_validation["LR_PSNR"] - 1


def test_the_validation_set_is_degraded_once_and_the_same_every_time(val_shards):
    from vsrpp_dist.data.validation_set import ValidationSet
    from vsrpp_dist.training.validation import SequenceInputs

    def degraded(seed, seq):
        return torch.stack([lq for _, lq in d.sequence(zip(seq.gt, [None] * len(seq.gt)), seed=seed, index=seq.index,
                                                       device=torch.device("cpu"))])

    d = realistic()
    def made(inputs, frames):
        return torch.stack(list(inputs.frames(seq, torch.device("cpu"), frames).values()))

    fixed = SequenceInputs(d, seed=4)
    seq = next(iter(ValidationSet(val_shards)))
    every = list(range(seq.gt.shape[0]))
    first = made(fixed, every)
    kept = fixed.kept[seq.index]
    assert torch.equal(made(fixed, every[2:]), first[2:]) and fixed.kept[seq.index] is kept  # made once: the codec costs
    cheap = SequenceInputs(D.BicubicDegradation(), seed=4)
    assert torch.equal(made(cheap, [1, 3]), made(cheap, every)[[1, 3]])
    assert cheap.kept == {}  # bicubic is made again each time, only the frames asked for: nothing held for the run
    assert torch.equal(first, degraded(4, seq))
    assert not torch.equal(first, degraded(5, seq))
    assert first.dtype == torch.uint8 and first.shape[-2:] == (seq.gt.shape[-2] // 3, seq.gt.shape[-1] // 3)


def test_real_lr_shards_cannot_be_degraded_again(tmp_path, demo_frames):
    from vsrpp_dist.data.pack_command import main as pack
    from vsrpp_dist.imresize import downscale  # noqa: F401 (the packed LR is bicubic here)
    from vsrpp_dist.training.startup import open_data

    lr_root = tmp_path / "lr"
    from PIL import Image

    for seq in sorted(p for p in demo_frames.iterdir() if p.is_dir()):
        (lr_root / seq.name).mkdir(parents=True)
        for frame in sorted(seq.iterdir()):
            image = Image.open(frame)
            image.resize((image.width // 3, image.height // 3), Image.BICUBIC).save(lr_root / seq.name / frame.name)
    out = tmp_path / "shards"
    assert pack([str(demo_frames), str(out), "--lr", str(lr_root), "--min-tile", "48"]) == 0
    cfg = make_config(tmp_path / "run", out, "", *REALISTIC)
    with pytest.raises(ConfigError, match="packed with real LR frames"):
        open_data(cfg, world_size=1)


def test_the_degradation_bench_measures_both_kinds_side_by_side(train_shards, tmp_path, capsys):
    import json

    from vsrpp_dist.tools import bench

    from ..helpers import TINY

    out = tmp_path / "figures.json"
    assert bench.main(["degradation", "--config", str(TINY), "--shards", str(train_shards), "--clips", "4",
                       "--batches", "2", "--steps", "2", "--warmup", "1", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    for kind in ("bicubic", "realistic"):
        rounds = figures["rounds"][kind]
        assert all(v > 0 for v in rounds["loader"] + rounds["device"] + rounds["s_per_iter"])
    printed = capsys.readouterr().out
    assert "loader clips/s (1 core)" in printed and "trainer data wait" in printed


def test_configs_realistic_writes_out_the_default_ranges():
    from ..helpers import ROOT

    cfg = load_config(ROOT / "configs" / "realistic.yaml")
    assert cfg.degradation == load_config(None, [*REALISTIC]).degradation
    demo = load_config(ROOT / "configs" / "demo.yaml")
    assert cfg.model == demo.model and cfg.data == demo.data  # the demo's model, for a fair comparison


def test_evaluate_scores_the_same_degraded_set_a_realistic_run_validates_on(val_shards, tmp_path, capsys):
    import json

    from vsrpp_dist.config import ValidationConfig
    from vsrpp_dist.data.validation_set import ValidationSet
    from vsrpp_dist.inference import evaluate
    from vsrpp_dist.inference.loading import load_model
    from vsrpp_dist.training.validation import Validator

    from ..helpers import OneProcess, Quiet, save_weights

    weights = save_weights(tmp_path / "weights.pt", seed=2)
    out = tmp_path / "realistic.json"
    assert evaluate.cli(["--checkpoint", str(weights), "--data", str(val_shards), "--degradation", "realistic",
                         "--seed", "4", "--json", str(out), "--quiet"]) == 0
    realistic_rows = {r["sequence"]: r for r in json.loads(out.read_text())["rows"]}
    assert evaluate.cli(["--checkpoint", str(weights), "--data", str(val_shards), "--json", str(tmp_path / "bi.json"),
                         "--quiet"]) == 0
    bicubic_rows = {r["sequence"]: r for r in json.loads((tmp_path / "bi.json").read_text())["rows"]}
    assert realistic_rows["overall"]["y_psnr_bicubic"] < bicubic_rows["overall"]["y_psnr_bicubic"] - 1

    validator = Validator(ValidationSet(val_shards), ValidationConfig(images=0), OneProcess(), Quiet(),
                          degradation=realistic(), seed=4)
    scores = validator.run(load_model(weights, torch.device("cpu")).model, step=0)
    # the same frames to float rounding (batched vs per-frame convolutions differ by CPU: 1.5e-5 dB seen);
    # a different degradation moves PSNR by whole tenths of a dB
    assert realistic_rows["overall"]["y_psnr_model"] == pytest.approx(scores["KI_PSNR"], abs=1e-4)
    assert realistic_rows["overall"]["y_psnr_bicubic"] == pytest.approx(scores["LR_PSNR"], abs=1e-4)
    capsys.readouterr()
    assert evaluate.cli(["--checkpoint", str(weights), "--data", str(val_shards), "--degradation", "realistic",
                         "--lr", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--lr and --degradation realistic exclude each other" in err and "\n" not in err
