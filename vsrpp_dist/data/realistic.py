"""The realistic degradation: RealBasicVSR's second-order degradation, built for video.

    first order    blur -> resize (relative to GT) -> noise -> JPEG -> video codec
    second order   blur -> resize (relative to GT/3) -> noise -> JPEG
    final          [resize to GT/3 -> sinc]  and  [video codec], in an order drawn per clip

The split of the work follows where each part is cheap. Every random choice is drawn in the loader
worker from the stream's per-clip generator (`draw`: a few hundred numbers and three stacks of small
kernels per clip), so the same seed gives the same degraded clip on any rank, in any worker, and a
resumed run draws exactly what the uninterrupted one drew. Blur, resize and noise then run on the
training device inside the step (`apply`), all frames of a clip in one call, as Real-ESRGAN does on
the GPU; the noise comes from a generator seeded by the clip's draw. JPEG and the video codec
(PyAV, in memory, yuv420p) need the CPU: the frames go there at their small intermediate size, one
thread per clip, and come back.

The frames of a clip must look like one degraded video, so the kernel shape and size, the resize, the
noise kind and the codec with its rate are drawn once per clip, while the blur's sigma, angle and
shape, the noise level and the JPEG quality drift frame to frame by a bounded random walk (the
`*_drift` settings); the noise pattern itself is new in every frame, as a sensor's is.
"""

from __future__ import annotations

import fractions
import io
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from ..config import KERNEL_SHAPES, MAX_KERNEL_SIZE, SCALE, ConfigError, DegradationConfig
from ..files import usable_cores
from ..metrics import to_uint8
from .degradation import Degradation, FramePair

RESIZE_MODES = ("bilinear", "area", "bicubic")
MIN_SIZE = 16  # every intermediate frame keeps at least this edge (and an even size, for yuv420p)
FPS = 25  # the frame rate the codec is told (bitrates are per second)
CODEC_DECODERS = {"libx264": "h264", "mpeg4": "mpeg4"}


# -- kernels -----------------------------------------------------------------------------------------


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    return torch.meshgrid(ax, ax, indexing="xy")


def _mahalanobis(size: int, sigma_x: float, sigma_y: float, theta: float) -> torch.Tensor:
    """x^T Sigma^-1 x on the kernel grid, Sigma = R(theta) diag(sx^2, sy^2) R(theta)^T."""
    x, y = _grid(size)
    c, s = math.cos(theta), math.sin(theta)
    u, v = c * x + s * y, -s * x + c * y
    return (u / sigma_x) ** 2 + (v / sigma_y) ** 2


def blur_kernel(shape: str, size: int, sigma_x: float, sigma_y: float, theta: float, beta: float,
                omega: float) -> torch.Tensor:
    """One normalised (size, size) kernel of the named shape (BasicSR's definitions)."""
    if shape == "sinc":
        return sinc_kernel(size, omega)
    q = _mahalanobis(size, sigma_x, sigma_y, theta)
    if shape.startswith("generalized"):
        k = torch.exp(-0.5 * q ** beta)
    elif shape.startswith("plateau"):
        k = 1.0 / (1.0 + q ** beta)
    else:
        k = torch.exp(-0.5 * q)
    return (k / k.sum()).float()


def sinc_kernel(size: int, omega: float) -> torch.Tensor:
    """The circular low-pass (2-D sinc) with cut-off `omega`: the ringing of a sharp resampler."""
    x, y = _grid(size)
    r = torch.sqrt(x ** 2 + y ** 2)
    centre = r == 0
    k = omega * torch.special.bessel_j1(omega * r) / (2 * math.pi * torch.where(centre, 1.0, r))
    k = torch.where(centre, omega ** 2 / (4 * math.pi), k)
    return (k / k.sum()).float()


def _pad_kernel(k: torch.Tensor) -> torch.Tensor:
    pad = (MAX_KERNEL_SIZE - k.shape[-1]) // 2
    return F.pad(k, (pad, pad, pad, pad))


# -- what is drawn per clip --------------------------------------------------------------------------


def _walk(rng: np.random.Generator, frames: int, low: float, high: float, drift: float,
          clip: bool = True) -> np.ndarray:
    """A value drawn in [low, high] that moves by at most `drift` per frame (reflected at the ends)."""
    values = np.empty(frames)
    values[0] = rng.uniform(low, high)
    for t in range(1, frames):
        v = values[t - 1] + rng.uniform(-drift, drift)
        if clip and high > low:  # reflect back into the range, so the walk does not stick to an end
            v = low + abs(v - low) if v < low else high - abs(v - high) if v > high else v
            v = min(max(v, low), high)
        values[t] = v
    return values


def _choose(rng: np.random.Generator, weights) -> int:
    p = np.asarray(weights, dtype=np.float64)
    return int(rng.choice(len(p), p=p / p.sum()))


def _draw_blur(rng: np.random.Generator, cfg, frames: int) -> tuple[bool, torch.Tensor]:
    if rng.random() >= cfg.prob:
        return False, torch.zeros(frames, MAX_KERNEL_SIZE, MAX_KERNEL_SIZE)
    shape = KERNEL_SHAPES[_choose(rng, [getattr(cfg, k) for k in KERNEL_SHAPES])]
    sizes = [s for s in range(cfg.kernel_size[0], cfg.kernel_size[1] + 1) if s % 2 == 1]
    size = int(rng.choice(sizes))
    sigma_x = _walk(rng, frames, *cfg.sigma, cfg.sigma_drift)
    sigma_y = _walk(rng, frames, *cfg.sigma, cfg.sigma_drift) if "aniso" in shape else sigma_x
    theta = _walk(rng, frames, -math.pi, math.pi, cfg.angle_drift, clip=False) if "aniso" in shape \
        else np.zeros(frames)
    beta_range = cfg.beta_plateau if shape.startswith("plateau") else cfg.beta_gaussian
    beta = _walk(rng, frames, *beta_range, cfg.beta_drift)
    omega = _walk(rng, frames, *cfg.omega, cfg.omega_drift)
    kernels = [_pad_kernel(blur_kernel(shape, size, sigma_x[t], sigma_y[t], theta[t], beta[t], omega[t]))
               for t in range(frames)]
    return True, torch.stack(kernels)


@dataclass
class OrderDraw:
    """One order's choices for one clip."""

    blur: bool
    kernels: torch.Tensor  # (T, K, K), zeros when not blurred
    resize_scale: float
    resize_mode: int
    noise: int  # 0 none, 1 Gaussian, 2 Poisson
    noise_gray: bool
    noise_level: np.ndarray  # (T,) sigma in 8-bit levels, or the Poisson scale
    noise_seed: int
    jpeg_quality: np.ndarray  # (T,) ints; empty: no JPEG
    codec: int  # index into the order's codec list; -1: none
    rate: float  # bitrate (bit/s) or CRF


def _draw_order(rng: np.random.Generator, cfg, frames: int) -> OrderDraw:
    blur, kernels = _draw_blur(rng, cfg.blur, frames)
    r = cfg.resize
    direction = _choose(rng, [r.up, r.down, r.keep])
    low, high = r.scale
    scale = (rng.uniform(max(1.0, low), max(1.0, high)) if direction == 0 else
             rng.uniform(low, min(1.0, high)) if direction == 1 else 1.0)
    mode = int(rng.integers(len(RESIZE_MODES)))
    n = cfg.noise
    noise = 0 if rng.random() >= n.prob else (1 if rng.random() < n.gaussian else 2)
    gray = bool(rng.random() < n.gray)
    level = (_walk(rng, frames, *n.gaussian_sigma, n.sigma_drift) if noise == 1 else
             _walk(rng, frames, *n.poisson_scale, n.scale_drift) if noise == 2 else np.zeros(frames))
    seed = int(rng.integers(2**31 - 1))
    j = cfg.jpeg
    quality = np.empty(0)
    if rng.random() < j.prob:
        quality = np.rint(_walk(rng, frames, *j.quality, j.quality_drift)).astype(int)
    v = cfg.video
    codec, rate = -1, 0.0
    if rng.random() < v.prob:
        codec = int(rng.integers(len(v.codec_list)))
        if v.control == "crf":
            rate = float(rng.integers(v.crf[0], v.crf[1] + 1))
        else:  # log-uniform: a bitrate range spans a decade
            rate = float(math.exp(rng.uniform(math.log(v.bitrate[0]), math.log(v.bitrate[1]))))
    return OrderDraw(blur, kernels, float(scale), mode, noise, gray, level, seed, quality, codec, rate)


# The per-clip draw travels from the worker as a few fixed-size tensors (the batch stacks them).
PER_ORDER = ("blur", "resize_scale", "resize_mode", "noise", "noise_gray", "noise_seed", "jpeg", "codec", "rate")


def _pack(first: OrderDraw, second: OrderDraw, final_sinc: bool, final_kernel: torch.Tensor, final_mode: int,
          codec_last: bool) -> dict[str, torch.Tensor]:
    def scalars(o: OrderDraw) -> list[float]:
        return [float(o.blur), o.resize_scale, float(o.resize_mode), float(o.noise), float(o.noise_gray),
                float(o.noise_seed), float(len(o.jpeg_quality) > 0), float(o.codec), o.rate]

    frames = first.kernels.shape[0]

    def quality(o: OrderDraw) -> np.ndarray:
        return o.jpeg_quality if len(o.jpeg_quality) else np.zeros(frames)

    return {
        "degradation_kernels": torch.stack([first.kernels, second.kernels, final_kernel]),  # (3, T, K, K)
        "degradation_scalars": torch.tensor(scalars(first) + scalars(second)
                                            + [float(final_sinc), float(final_mode), float(codec_last)],
                                            dtype=torch.float64),
        "degradation_frames": torch.tensor(np.stack([first.noise_level, quality(first), second.noise_level,
                                                     quality(second)]), dtype=torch.float64),  # (4, T)
    }


def _unpack(plans: Mapping[str, torch.Tensor], i: int) -> tuple[OrderDraw, OrderDraw, bool, torch.Tensor, int, bool]:
    kernels = plans["degradation_kernels"][i]
    scalars = plans["degradation_scalars"][i].tolist()
    per_frame = plans["degradation_frames"][i].cpu().numpy()
    orders = []
    for k in range(2):
        s = dict(zip(PER_ORDER, scalars[k * len(PER_ORDER):(k + 1) * len(PER_ORDER)]))
        quality = per_frame[2 * k + 1].astype(int) if s["jpeg"] else np.empty(0)
        orders.append(OrderDraw(bool(s["blur"]), kernels[k], s["resize_scale"], int(s["resize_mode"]), int(s["noise"]),
                                bool(s["noise_gray"]), per_frame[2 * k], int(s["noise_seed"]), quality, int(s["codec"]),
                                s["rate"]))
    final_sinc, final_mode, codec_last = scalars[2 * len(PER_ORDER):]
    return orders[0], orders[1], bool(final_sinc), kernels[2], int(final_mode), bool(codec_last)


# -- the stages --------------------------------------------------------------------------------------


def blur(x_tchw: torch.Tensor, kernels_tkk: torch.Tensor) -> torch.Tensor:
    """Each frame with its own kernel, all frames and channels in one grouped convolution."""
    t, c, h, w = x_tchw.shape
    k = kernels_tkk.shape[-1]
    weight = kernels_tkk.to(x_tchw).repeat_interleave(c, dim=0).unsqueeze(1)  # (T*C, 1, K, K)
    # mirrored edges (Real-ESRGAN's choice); frames smaller than the kernel repeat their edge instead
    mode = "reflect" if k // 2 < min(h, w) else "replicate"
    padded = F.pad(x_tchw.reshape(1, t * c, h, w), (k // 2,) * 4, mode=mode)
    return F.conv2d(padded, weight, groups=t * c).reshape(t, c, h, w)


def even_size(h: float, w: float) -> tuple[int, int]:
    return tuple(max(MIN_SIZE, 2 * int(round(v / 2))) for v in (h, w))


def resize(x_tchw: torch.Tensor, size: tuple[int, int], mode: int) -> torch.Tensor:
    if tuple(x_tchw.shape[-2:]) == tuple(size):
        return x_tchw
    name = RESIZE_MODES[mode]
    out = F.interpolate(x_tchw, size=size, mode=name, align_corners=False if name != "area" else None)
    return out.clamp_(0, 1)


def add_noise(x_tchw: torch.Tensor, kind: int, gray: bool, level: np.ndarray, seed: int) -> torch.Tensor:
    """Gaussian (sigma in 8-bit levels) or Poisson (shot noise of an 8-bit signal, times the scale) noise,
    per frame at that frame's level; `gray`: the same noise in every channel."""
    if kind == 0:
        return x_tchw
    gen = torch.Generator(device=x_tchw.device).manual_seed(seed)
    t, c, h, w = x_tchw.shape
    per_frame = torch.tensor(level, dtype=x_tchw.dtype, device=x_tchw.device).view(t, 1, 1, 1)
    if kind == 1:
        noise = torch.randn((t, 1 if gray else c, h, w), generator=gen, device=x_tchw.device, dtype=x_tchw.dtype)
        noise = noise * per_frame / 255
    else:
        base = x_tchw.mean(1, keepdim=True) if gray else x_tchw
        noise = (torch.poisson(base.clamp(0, 1) * 255, generator=gen) / 255 - base) * per_frame
    return (x_tchw + noise).clamp_(0, 1)


def to_uint8_hwc(x_tchw: torch.Tensor) -> np.ndarray:
    return x_tchw.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def from_uint8_hwc(frames: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).to(like.device, like.dtype).div_(255)


def jpeg(frames_thwc: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """Each frame through JPEG at its own quality (PIL, libjpeg, 4:2:0)."""
    from PIL import Image

    out = []
    for frame, q in zip(frames_thwc, quality):
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=int(q))
        out.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    return np.stack(out)


# BT.601 limited range, the matrix of standard-definition video and what most encoders assume.
RGB_TO_YUV = torch.tensor([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]])
YUV_OFFSET = torch.tensor([16.0, 128.0, 128.0])


def rgb_to_yuv420(x_tchw: torch.Tensor) -> np.ndarray:
    """(T, 3, H, W) in [0, 1], H and W even -> (T, 3H/2, W) uint8 planes: Y, then U and V at half size."""
    yuv = torch.einsum("ij,tjhw->tihw", RGB_TO_YUV.to(x_tchw), x_tchw) + YUV_OFFSET.to(x_tchw).view(1, 3, 1, 1)
    t, _, h, w = yuv.shape
    chroma = F.avg_pool2d(yuv[:, 1:], 2)  # 4:2:0: one chroma sample per 2x2 block
    planes = torch.cat([yuv[:, 0].reshape(t, h * w), chroma.reshape(t, 2 * (h // 2) * (w // 2))], dim=1)
    return planes.round_().clamp_(0, 255).to(torch.uint8).reshape(t, h * 3 // 2, w).cpu().numpy()


def yuv420_to_rgb(planes: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    t, rows, w = planes.shape
    h = rows * 2 // 3
    flat = torch.from_numpy(planes).to(like.device, like.dtype).reshape(t, -1)
    y = flat[:, :h * w].reshape(t, 1, h, w)
    chroma = flat[:, h * w:].reshape(t, 2, h // 2, w // 2)
    chroma = F.interpolate(chroma, size=(h, w), mode="bilinear", align_corners=False)
    yuv = torch.cat([y, chroma], dim=1) - YUV_OFFSET.to(like).view(1, 3, 1, 1)
    rgb = torch.einsum("ij,tjhw->tihw", torch.linalg.inv(RGB_TO_YUV).to(like), yuv)
    return rgb.clamp_(0, 1)


def yuv420_frame(planes_hw: np.ndarray, w: int, h: int):
    """A PyAV frame whose every byte is written, the row padding too (the edge repeated): encoders read
    past the visible width, and memory they read must not differ from run to run."""
    import av

    frame = av.VideoFrame(w, h, "yuv420p")
    flat = planes_hw.reshape(-1)
    start = 0
    for plane in frame.planes:
        visible = flat[start:start + plane.width * plane.height].reshape(plane.height, plane.width)
        start += plane.width * plane.height
        rows = np.pad(visible, ((0, 0), (0, plane.line_size - plane.width)), mode="edge")
        plane.update(np.ascontiguousarray(rows).tobytes())
    return frame


def video_codec(planes: np.ndarray, codec: str, control: str, rate: float) -> np.ndarray:
    """yuv420p frames (T, 3H/2, W) encoded as one stream and decoded again, in memory (PyAV): the
    blocks, ringing and temporal smearing of a real codec, the same bytes on every run. The colour
    conversion is done outside, for all frames at once."""
    import av

    t, rows, w = planes.shape
    enc = av.CodecContext.create(codec, "w")
    enc.width, enc.height, enc.pix_fmt = w, rows * 2 // 3, "yuv420p"
    enc.time_base, enc.framerate = fractions.Fraction(1, FPS), fractions.Fraction(FPS, 1)
    enc.thread_count = 1
    # x264 made identical inputs encode differently now and then (1 in ~100 runs here, even with one
    # thread) through its macroblock-tree rate control, which would break exact resume; without it every
    # run gives the same bytes.
    options = {"threads": "1", "x264-params": "no-mbtree=1"} if codec == "libx264" else {}
    if control == "crf":
        options["crf"] = str(int(rate))
    else:
        enc.bit_rate = int(rate)
    enc.options = options
    stream = []
    for i, frame in enumerate(planes):
        vf = yuv420_frame(frame, w, rows * 2 // 3)
        vf.pts = i
        stream += [bytes(p) for p in enc.encode(vf)]
    stream += [bytes(p) for p in enc.encode(None)]
    dec = av.CodecContext.create(CODEC_DECODERS[codec], "r")
    dec.thread_count = 1
    # FFmpeg's mpeg4 decoder takes some low-bitrate frames it decoded whole for damaged ("slice end not
    # reached") and "conceals" them from memory it never wrote; our streams are never damaged.
    dec.options = {"ec": "0"}
    out = [f.to_ndarray() for data in stream for f in dec.decode(av.Packet(data))]
    out += [f.to_ndarray() for f in dec.decode(None)]
    if len(out) != t:
        raise RuntimeError(f"{codec}: {t} frames in, {len(out)} out")
    return np.stack(out)


# -- the pipeline ------------------------------------------------------------------------------------


class RealisticDegradation(Degradation):
    frame_by_frame = False  # one video: drift and codec run across the sequence (costly: validation keeps it)

    def __init__(self, cfg: DegradationConfig) -> None:
        self.cfg = cfg
        check_codecs(cfg)
        self._pool: ThreadPoolExecutor | None = None

    def __getstate__(self) -> dict:
        # The stream carries this object to its loader workers, maybe after auto-tune's probe made the
        # pool: a thread pool does not pickle (spawn, forkserver), and a worker only draws.
        return {**self.__dict__, "_pool": None}

    def draw(self, rng: np.random.Generator, frames: int) -> dict[str, torch.Tensor]:
        """Every random choice for one clip of `frames` frames, from the stream's per-clip generator."""
        first = _draw_order(rng, self.cfg.first, frames)
        second = _draw_order(rng, self.cfg.second, frames)
        final = self.cfg.final
        final_sinc = bool(rng.random() < final.sinc_prob)
        omega = rng.uniform(*final.omega)
        kernel = _pad_kernel(sinc_kernel(MAX_KERNEL_SIZE, omega)) if final_sinc else \
            torch.zeros(MAX_KERNEL_SIZE, MAX_KERNEL_SIZE)
        final_mode = int(rng.integers(len(RESIZE_MODES)))
        codec_last = bool(rng.random() < 0.5) if final.shuffle else True
        return _pack(first, second, final_sinc, kernel.expand(frames, -1, -1).clone(), final_mode, codec_last)

    def apply(self, gt_btchw: torch.Tensor, plans: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The degraded clips (B, T, 3, H/3, W/3) in [0, 1], 8-bit quantised, from GT clips in [0, 1] and
        the batch holding each clip's draw."""
        b = gt_btchw.shape[0]
        if b == 1 or gt_btchw.device.type == "cpu":  # on the CPU the threads would only share its cores
            return torch.stack([self.degrade_clip(gt_btchw[i], plans, i) for i in range(b)])
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=min(4, usable_cores()),
                                            thread_name_prefix="degradation")
        # One clip per thread: the device work is queued from each, the codecs run side by side.
        return torch.stack(list(self._pool.map(lambda i: self.degrade_clip(gt_btchw[i], plans, i), range(b))))

    def sequence(self, frames: Iterable[FramePair], *, seed: int, index: int,
                 device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # the whole sequence degraded as one video (drift and codec run across its frames): held in memory
        gts = [gt for gt, _ in frames]
        if not gts:
            return
        draw = self.draw(np.random.default_rng([seed, index]), len(gts))
        gt = torch.stack(gts).to(device).float().div_(255).unsqueeze(0)
        with torch.no_grad():
            lq = self.apply(gt, {k: v.unsqueeze(0) for k, v in draw.items()})[0]
        yield from zip(gts, to_uint8(lq))

    def describe(self, seed: int) -> str:
        ranges = "default" if self.cfg == DegradationConfig(kind="realistic") else "configured"
        return f"realistic degradation ({ranges} ranges), seed {seed}"

    def degrade_clip(self, gt_tchw: torch.Tensor, plans: Mapping[str, torch.Tensor], i: int) -> torch.Tensor:
        first, second, final_sinc, final_kernels, final_mode, codec_last = _unpack(plans, i)
        h, w = gt_tchw.shape[-2:]
        target = (h // SCALE, w // SCALE)
        x = self._order(gt_tchw, first, self.cfg.first, (h, w), with_video=True)
        x = self._order(x, second, self.cfg.second, target, with_video=False)

        def resize_and_sinc(x: torch.Tensor) -> torch.Tensor:
            x = resize(x, target, final_mode)
            return blur(x, final_kernels).clamp_(0, 1) if final_sinc else x

        def last_codec(x: torch.Tensor) -> torch.Tensor:
            return self._video(x, second, self.cfg.second)

        x = last_codec(resize_and_sinc(x)) if codec_last else resize_and_sinc(last_codec(x))
        return x.clamp(0, 1).mul(255).round().div(255)  # out of place: x may still be the caller's GT

    def _order(self, x: torch.Tensor, draw: OrderDraw, cfg, relative_to: tuple[int, int],
               with_video: bool) -> torch.Tensor:
        if draw.blur:
            x = blur(x, draw.kernels).clamp_(0, 1)
        x = resize(x, even_size(relative_to[0] * draw.resize_scale, relative_to[1] * draw.resize_scale),
                   draw.resize_mode)
        x = add_noise(x, draw.noise, draw.noise_gray, draw.noise_level, draw.noise_seed)
        if len(draw.jpeg_quality):
            x = from_uint8_hwc(jpeg(to_uint8_hwc(x), draw.jpeg_quality), x)
        if with_video:
            x = self._video(x, draw, cfg)
        return x

    def _video(self, x: torch.Tensor, draw: OrderDraw, cfg) -> torch.Tensor:
        if draw.codec < 0:
            return x
        h, w = x.shape[-2:]
        # Whole macroblocks, as an encoder's own padding makes them: with a size that is not a multiple of
        # 16, x264 was seen to read the frame buffer's uninitialised padding (outputs differing run to run).
        pad_h, pad_w = -h % 16, -w % 16
        padded = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else x
        planes = video_codec(rgb_to_yuv420(padded), cfg.video.codec_list[draw.codec], cfg.video.control, draw.rate)
        return yuv420_to_rgb(planes, x)[..., :h, :w]


def check_codecs(cfg: DegradationConfig) -> None:
    """Refuse, before any work, a codec this PyAV build cannot encode."""
    import av

    for order in ("first", "second"):
        for name in getattr(cfg, order).video.codec_list:
            try:
                av.codec.Codec(name, "w")
            except Exception:
                raise ConfigError(f"degradation.{order}.video.codecs: the installed PyAV ({av.__version__}) has "
                                  f"no {name} encoder; choose from those it has (`python -m av --codecs`)") from None
