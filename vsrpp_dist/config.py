"""One config tree for everything: frozen dataclasses, loaded from YAML, overridden by `key.sub=value`.

Every field carries a one-line doc and, where it matters, its allowed range or choices, so that a bad
value is refused with one line naming the key before any work starts. The resolved tree is written into
the run directory and into every checkpoint.
"""

from __future__ import annotations

import dataclasses
import types
import typing
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .cli import note
from .errors import ConfigError
from .masking import mask_tree


def setting(default: Any, doc: str, *, choices: tuple | None = None, min: float | None = None,
            max: float | None = None) -> Any:
    """A config field with its doc line and the constraints the loader enforces."""
    meta = {"doc": doc, "choices": choices, "min": min, "max": max}
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples for sequence defaults so the config stays frozen")
    return dataclasses.field(default=default, metadata=meta)


# The shipped configs (default, 6gb, demo, realistic, finetune, tiny): package data, so they are there in
# an installed wheel as in the repository (whose configs/ links here).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"

# The upscaling factor of everything here: the architecture (VSRBidirectional_3x), the shards' LR/GT
# geometry, the degradation and the metrics. The one definition; ModelConfig.scale records it.
SCALE = 3


@dataclass(frozen=True)
class RunConfig:
    dir: str = setting("runs/default", "run directory: logs, checkpoints, resolved config")
    seed: int = setting(0, "seed for weights, data stream and augmentation", min=0)


@dataclass(frozen=True)
class Alignment:
    """What an alignment variant (`model.alignment`) is, as the rest of the program asks it."""

    name: str
    explicit: bool  # estimates flows: a flow network, the photometric warm-up, its own LR group
    deformable: bool  # aligns by a deformable convolution whose offsets it reports
    keys: tuple[str, ...]  # the model keys it uses beyond the ones every variant has


# The alignment variants: the one list (the model's constructor keeps a guard of its own, since the model
# imports only torch; tests/model/test_alignment.py checks the two name the same variants).
ALIGNMENTS = {a.name: a for a in (
    Alignment("implicit", explicit=False, deformable=False, keys=()),
    Alignment("flow", explicit=True, deformable=False, keys=("flow_channels", "flow_levels", "max_flow")),
    Alignment("flow_deform", explicit=True, deformable=True,
              keys=("flow_channels", "flow_levels", "max_flow", "deform_groups", "max_residue")),
)}


@dataclass(frozen=True)
class ModelConfig:
    name: str = setting("VSRBidirectional_3x", "architecture", choices=("VSRBidirectional_3x",))
    scale: int = setting(SCALE, "upscaling factor (the architecture is built for x3)", choices=(SCALE,))
    num_frames: int = setting(5, "LR frames per clip; the centre one is restored", choices=(5,))
    channels: int = setting(128, "feature width of every trunk", min=4, max=4096)
    extract_blocks: int = setting(5, "residual blocks of the per-frame feature extractor", min=0, max=1000)
    propagation_blocks: int = setting(10, "residual blocks in each propagation branch", min=1, max=1000)
    reconstruction_blocks: int = setting(5, "residual blocks after fusion", min=0, max=1000)
    upsample_channels: int = setting(64, "channels after the x3 pixel shuffle", min=3, max=4096)
    alignment: str = setting("implicit", "how a branch aligns its state to the next frame: implicit (convolutions "
                             "only), flow (warp by a learned flow), flow_deform (deformable conv guided by it)",
                             choices=tuple(ALIGNMENTS))
    flow_channels: int = setting(32, "width of the flow network (flow and flow_deform)", min=2, max=4096)
    flow_levels: int = setting(3, "pyramid levels of the flow network (each halves the resolution)", min=1, max=6)
    max_flow: float = setting(16.0, "flows are clamped to this many LR pixels per frame step (bounds the "
                              "receptive field, so tiled inference stays exact)", min=1.0)
    deform_groups: int = setting(8, "offset groups of the deformable alignment (must divide channels)", min=1)
    max_residue: float = setting(10.0, "bound (LR pixels) of the deformable offsets' deviation from the flow", min=0.0)

    def __post_init__(self) -> None:
        if self.alignment not in ALIGNMENTS:  # built directly, not loaded (a load checks the choices first)
            raise ConfigError(f"alignment: {self.alignment!r} is not one of {', '.join(ALIGNMENTS)}")
        if self.deformable_alignment and self.channels % self.deform_groups:
            raise ConfigError(f"deform_groups: {self.deform_groups} does not divide model.channels {self.channels}")

    @property
    def explicit_alignment(self) -> bool:
        """Whether the alignment estimates flows (flow, flow_deform): a flow network, the photometric
        warm-up, its own LR group, flows in inference's per-frame cache."""
        return ALIGNMENTS[self.alignment].explicit

    @property
    def deformable_alignment(self) -> bool:
        """Whether the alignment is a deformable convolution (flow_deform), with offsets to report."""
        return ALIGNMENTS[self.alignment].deformable


# A checkpoint made before a model key existed was trained with this value of it (later keys that only
# matter for other alignments take their defaults).
LEGACY_MODEL_VALUES = {"alignment": "implicit"}


def with_legacy_values(model_values: dict) -> dict:
    """A saved model config with the keys it predates filled in as the model it describes was built."""
    return {**LEGACY_MODEL_VALUES, **model_values}


def architecture_of(model_values: dict) -> dict:
    """The model keys that decide the architecture and its weights, from a saved or current model
    config: every key except the ones only other alignment variants use."""
    values = with_legacy_values(model_values)
    used = ALIGNMENTS[values["alignment"]].keys if values["alignment"] in ALIGNMENTS else ()
    unused = {key for a in ALIGNMENTS.values() for key in a.keys} - set(used)
    return {f.name: values.get(f.name) for f in dataclasses.fields(ModelConfig) if f.name not in unused}


@dataclass(frozen=True)
class AugmentConfig:
    flip_horizontal: bool = setting(True, "random left-right flip")
    flip_vertical: bool = setting(True, "random up-down flip")
    rotate90: bool = setting(True, "random 90 degree rotation (square patches only)")
    reverse_time: bool = setting(True, "random reversal of the frame order")


@dataclass(frozen=True)
class DataConfig:
    train_shards: str = setting("", "where `python -m vsrpp_dist.pack` wrote (holds manifest.json): a folder, "
                                "s3://bucket/prefix, gs://bucket/prefix, http(s)://host/prefix or pipe:CMD {name}")
    val_shards: str = setting("", "validation shards written by `pack --val` (same forms); empty: no validation")
    lr_patch_size: int = setting(64, "LR patch edge in pixels (GT patch is 3x)", min=8, max=4096)
    batch_size_per_gpu: int = setting(8, "clips per forward pass on one rank", min=1, max=65536)
    num_workers: int = setting(4, "loader worker processes per rank (0: load in the training process)", min=0)
    shuffle_buffer_mb: int = setting(256, "per-worker shuffle buffer of raw samples, in MB", min=0)
    prefetch_batches: int = setting(4, "batches each worker prepares ahead", min=1)
    pin_memory: bool = setting(True, "page-locked host batches for asynchronous copies (GPU only)")
    verify_checksums: bool = setting(True, "check each shard's sha256 against the manifest on first use (remote "
                                     "shards: while they are read)")
    remote_retries: int = setting(3, "retries of a remote file after a transient fault (reset, 5xx, timeout) "
                                  "before the shard is skipped and counted", min=0, max=100)
    remote_backoff_s: float = setting(1.0, "wait before the first retry, doubling each time", min=0.0, max=300.0)
    remote_timeout_s: float = setting(30.0, "a remote connection or read that gets nothing for this long fails",
                                      min=0.1, max=600.0)
    remote_min_mb_per_s: float = setting(0.25, "a remote shard that arrives slower than this on average is a "
                                         "transient fault (a server trickling bytes would never time out): each "
                                         "attempt's deadline is remote_timeout_s + its size at this rate",
                                         min=0.001, max=100000.0)
    read_ahead_mb: int = setting(32, "per loader worker, MB of a remote shard read ahead of decoding "
                                 "(0: read in the worker's own thread)", min=0, max=65536)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig,
                                               metadata={"doc": "augmentations of training clips"})


# -- degradation: how training makes the model's input frames from GT ----------------------------------
# `realistic` defaults are RealBasicVSR's published ranges (MMagic's realbasicvsr config); noise levels
# are in 8-bit units, bitrates in bit/s at 25 frames/s. Where a value drifts from frame to frame, its
# `*_drift` is the largest step of the random walk per frame (RealBasicVSR's `*_step`).

PI = 3.141592653589793
KERNEL_SHAPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso", "sinc")
MAX_KERNEL_SIZE = 21
VIDEO_CODECS = ("libx264", "mpeg4")


@dataclass(frozen=True)
class BlurConfig:
    prob: float = setting(1.0, "probability that a clip is blurred", min=0.0, max=1.0)
    kernel_size: tuple[int, int] = setting((7, MAX_KERNEL_SIZE), "kernel edge range (odd sizes drawn from it)",
                                           min=3, max=MAX_KERNEL_SIZE)
    iso: float = setting(0.405, "relative weight of isotropic Gaussian kernels", min=0.0)
    aniso: float = setting(0.225, "... anisotropic (rotated) Gaussian", min=0.0)
    generalized_iso: float = setting(0.108, "... isotropic generalised Gaussian", min=0.0)
    generalized_aniso: float = setting(0.027, "... anisotropic generalised Gaussian", min=0.0)
    plateau_iso: float = setting(0.108, "... isotropic plateau", min=0.0)
    plateau_aniso: float = setting(0.027, "... anisotropic plateau", min=0.0)
    sinc: float = setting(0.1, "... sinc (ringing)", min=0.0)
    sigma: tuple[float, float] = setting((0.2, 3.0), "Gaussian sigma range, pixels", min=0.01)
    beta_gaussian: tuple[float, float] = setting((0.5, 4.0), "shape range of generalised Gaussians", min=0.01)
    beta_plateau: tuple[float, float] = setting((1.0, 2.0), "shape range of plateau kernels", min=0.01)
    omega: tuple[float, float] = setting((PI / 3, PI), "sinc cut-off range, radians", min=0.01, max=PI)
    sigma_drift: float = setting(0.02, "per-frame drift of sigma", min=0.0)
    angle_drift: float = setting(0.31416, "per-frame drift of the kernel's rotation, radians", min=0.0)
    beta_drift: float = setting(0.05, "per-frame drift of the kernel shape beta", min=0.0)
    omega_drift: float = setting(0.0628, "per-frame drift of the sinc cut-off", min=0.0)

    def __post_init__(self) -> None:
        if self.kernel_size[1] % 2 == 0 and self.kernel_size[0] == self.kernel_size[1]:
            raise ConfigError(f"kernel_size: {list(self.kernel_size)} holds no odd size")
        if sum(getattr(self, k) for k in KERNEL_SHAPES) <= 0:
            raise ConfigError(f"the kernel weights ({', '.join(KERNEL_SHAPES)}): at least one must be above 0")


@dataclass(frozen=True)
class ResizeConfig:
    up: float = setting(0.2, "relative weight of enlarging", min=0.0)
    down: float = setting(0.7, "relative weight of shrinking", min=0.0)
    keep: float = setting(0.1, "relative weight of keeping the size", min=0.0)
    scale: tuple[float, float] = setting((0.15, 1.5), "scale range (up draws above 1, down below 1)", min=0.05, max=4.0)

    def __post_init__(self) -> None:
        if self.up + self.down + self.keep <= 0:
            raise ConfigError("up, down, keep: at least one weight must be above 0")


@dataclass(frozen=True)
class NoiseConfig:
    prob: float = setting(1.0, "probability that noise is added", min=0.0, max=1.0)
    gaussian: float = setting(0.5, "probability of Gaussian noise (else Poisson)", min=0.0, max=1.0)
    gaussian_sigma: tuple[float, float] = setting((1.0, 30.0), "Gaussian noise sigma range, 8-bit levels", min=0.0,
                                                  max=255.0)
    poisson_scale: tuple[float, float] = setting((0.05, 3.0), "Poisson noise scale range", min=0.0, max=100.0)
    gray: float = setting(0.4, "probability that the noise is the same in all colour channels", min=0.0, max=1.0)
    sigma_drift: float = setting(0.1, "per-frame drift of the Gaussian sigma", min=0.0)
    scale_drift: float = setting(0.005, "per-frame drift of the Poisson scale", min=0.0)


@dataclass(frozen=True)
class JpegConfig:
    prob: float = setting(1.0, "probability of JPEG compression per clip", min=0.0, max=1.0)
    quality: tuple[int, int] = setting((30, 95), "JPEG quality range", min=1, max=100)
    quality_drift: int = setting(3, "per-frame drift of the quality", min=0)


@dataclass(frozen=True)
class VideoConfig:
    prob: float = setting(1.0, "probability of video compression per clip", min=0.0, max=1.0)
    codecs: str = setting("libx264,mpeg4", "comma-separated encoders to draw from (" + ", ".join(VIDEO_CODECS) + ")")
    control: str = setting("bitrate", "rate control: bitrate (every codec) or crf (libx264 only)",
                           choices=("bitrate", "crf"))
    bitrate: tuple[float, float] = setting((1e4, 1e5), "bitrate range, bit/s at 25 frames/s", min=1e3, max=1e9)
    crf: tuple[int, int] = setting((18, 35), "libx264 constant rate factor range (control=crf)", min=0, max=51)

    def __post_init__(self) -> None:
        names = [c.strip() for c in self.codecs.split(",") if c.strip()]
        unknown = [c for c in names if c not in VIDEO_CODECS]
        if not names or unknown:
            raise ConfigError(f"codecs: {unknown[0] if unknown else self.codecs!r} is not one of "
                              f"{', '.join(VIDEO_CODECS)}")
        if self.control == "crf" and names != ["libx264"]:
            raise ConfigError(f"control: crf needs codecs=libx264 (mpeg4 has no CRF), got codecs={self.codecs!r}")

    @property
    def codec_list(self) -> tuple[str, ...]:
        return tuple(c.strip() for c in self.codecs.split(",") if c.strip())


@dataclass(frozen=True)
class DegradationOrder:
    blur: BlurConfig = dataclasses.field(default_factory=BlurConfig, metadata={"doc": "blur"})
    resize: ResizeConfig = dataclasses.field(default_factory=ResizeConfig, metadata={"doc": "resize"})
    noise: NoiseConfig = dataclasses.field(default_factory=NoiseConfig, metadata={"doc": "noise"})
    jpeg: JpegConfig = dataclasses.field(default_factory=JpegConfig, metadata={"doc": "JPEG"})
    video: VideoConfig = dataclasses.field(default_factory=VideoConfig, metadata={"doc": "video codec"})


def _second_order() -> DegradationOrder:
    return DegradationOrder(blur=BlurConfig(prob=0.8, sigma=(0.2, 1.5)),
                            resize=ResizeConfig(up=0.3, down=0.4, keep=0.3, scale=(0.3, 1.2)),
                            noise=NoiseConfig(gaussian_sigma=(1.0, 25.0), poisson_scale=(0.05, 2.5)))


@dataclass(frozen=True)
class FinalStageConfig:
    sinc_prob: float = setting(0.8, "probability of the final sinc filter (ringing of the last resize)",
                               min=0.0, max=1.0)
    omega: tuple[float, float] = setting((PI / 3, PI), "final sinc cut-off range, radians", min=0.01, max=PI)
    shuffle: bool = setting(True, "draw per clip whether the last video compression comes before or after the "
                            "final resize and sinc (RealBasicVSR's shuffle of the second stage)")


@dataclass(frozen=True)
class DegradationConfig:
    kind: str = setting("bicubic", "bicubic: MATLAB bicubic x3 (the papers' BI protocol); realistic: second-order "
                        "random blur, resize, noise, JPEG and video compression (RealBasicVSR)",
                        choices=("bicubic", "realistic"))
    first: DegradationOrder = dataclasses.field(default_factory=DegradationOrder,
                                                metadata={"doc": "first order (realistic only)"})
    second: DegradationOrder = dataclasses.field(default_factory=_second_order,
                                                 metadata={"doc": "second order (realistic only)"})
    final: FinalStageConfig = dataclasses.field(default_factory=FinalStageConfig,
                                                metadata={"doc": "the last resize to GT/3, sinc and codec"})


@dataclass(frozen=True)
class OptimConfig:
    lr_peak: float = setting(1e-4, "learning rate reached at the end of warm-up", min=0.0)
    lr_min: float = setting(1e-6, "learning rate at the last step of the cosine", min=0.0)
    warmup_steps: int = setting(1000, "linear warm-up from 0 to lr_peak", min=0)
    beta1: float = setting(0.9, "Adam beta1", min=0.0, max=1.0)
    beta2: float = setting(0.99, "Adam beta2", min=0.0, max=1.0)
    weight_decay: float = setting(0.0, "AdamW weight decay", min=0.0)
    fused: str = setting("auto", "fused AdamW kernel: auto (on GPU), on, off", choices=("auto", "on", "off"))


@dataclass(frozen=True)
class PlateauConfig:
    enabled: bool = setting(True, "halve the LR when validation stops improving")
    patience: int = setting(5, "validations without improvement before a reduction", min=1)
    threshold_db: float = setting(0.01, "KI_PSNR gain (dB) that counts as an improvement", min=0.0)
    factor: float = setting(0.5, "LR multiplier per reduction", min=0.0, max=1.0)
    lr_floor: float = setting(1e-7, "the LR never drops below this through reductions", min=0.0)


@dataclass(frozen=True)
class LossConfig:
    l1_weight: float = setting(1.0, "base weight of the pixel L1 loss", min=0.0)
    ms_weight: float = setting(0.5, "base weight of the multi-scale L1 loss (1/2 and 1/4)", min=0.0)
    grad_weight: float = setting(0.1, "base weight of the gradient (edge) loss", min=0.0)


@dataclass(frozen=True)
class AdaptiveConfig:
    enabled: bool = setting(True, "adapt loss weights, clipping and aggressive mode during training")
    update_every: int = setting(50, "steps between adaptive updates (each costs one host sync)", min=1)
    weight_ema: float = setting(0.9, "smoothing of the per-loss averages behind the dynamic weights", min=0.0, max=1.0)
    weight_gamma: float = setting(0.5, "strength of the weight rule (0: fixed weights)", min=0.0)
    weight_min_factor: float = setting(0.5, "lower bound of a weight, as a factor of its base", min=0.0)
    weight_max_factor: float = setting(2.0, "upper bound of a weight, as a factor of its base", min=1.0)
    clip_percentile: float = setting(95.0, "clip gradients at this percentile of recent norms", min=1.0, max=100.0)
    clip_window: int = setting(200, "recent gradient norms the percentile is taken over", min=4)
    clip_min_samples: int = setting(20, "norms needed before percentile clipping starts", min=1)
    clip_initial: float = setting(1.0, "clip threshold until the window has enough norms", min=0.0)
    sharpness_on: float = setting(0.80, "aggressive mode on when output/GT gradient ratio falls below", min=0.0)
    sharpness_off: float = setting(0.90, "aggressive mode off when the ratio rises above", min=0.0)
    aggressive_grad_factor: float = setting(2.0, "edge-weight multiplier while aggressive mode is on", min=1.0)
    aggressive_min_steps: int = setting(200, "aggressive mode starts only after this step", min=0)


@dataclass(frozen=True)
class GuardConfig:
    max_nonfinite_in_row: int = setting(5, "non-finite steps in a row before rolling back to a checkpoint", min=1)
    rollback_lr_factor: float = setting(0.5, "LR multiplier applied on each rollback (they compound)", min=0.0, max=1.0)
    max_rollbacks: int = setting(5, "rollbacks in one run before training stops with an error", min=0)


@dataclass(frozen=True)
class AlignmentTrainingConfig:
    lr_factor: float = setting(1.0, "LR multiplier of the flow network and deformable offsets (0 freezes them "
                               "without touching requires_grad)", min=0.0)
    photometric_weight: float = setting(0.1, "weight of the self-supervised flow loss (LR neighbours warped onto "
                                        "each other) at step 0; it falls linearly to 0 at photometric_steps", min=0.0)
    photometric_steps: int = setting(1000, "steps over which the photometric warm-up fades out (0: none)", min=0)
    offset_warn_px: float = setting(50.0, "warn when the mean deformable offset exceeds this many LR pixels "
                                    "(EDVR's sign of a diverging alignment)", min=0.0)


# The model's parameters in the groups `init.freeze` names (model.architecture.MODULE_GROUPS).
FREEZABLE_GROUPS = ("extract", "propagation", "reconstruction", "upsample", "alignment")


@dataclass(frozen=True)
class InitConfig:
    """Starting a new run from existing weights (fine-tuning, a second training stage, another alignment)."""

    from_: str = setting("", "weights to start from: a run directory (its best checkpoint, else its latest), a "
                         "checkpoint folder or a symlink to one, or a weights file (.safetensors, legacy .pt); "
                         "empty: random weights. Read once when the run starts; --resume never reads it again")
    weights: str = setting("auto", "which weights of a checkpoint: ema, raw (the live model), auto (the EMA when "
                           "the checkpoint has one)", choices=("auto", "ema", "raw"))
    strict: bool = setting(True, "every tensor must match (same architecture); false: load the tensors whose name "
                           "and shape match, report the rest, keep the others as initialised")
    freeze: tuple[str, ...] = setting((), "module groups kept fixed (LR factor 0) for the first freeze_steps "
                                      "steps", choices=FREEZABLE_GROUPS)
    freeze_steps: int = setting(0, "steps the init.freeze groups stay fixed", min=0)


@dataclass(frozen=True)
class ValidationConfig:
    every: int = setting(1000, "steps between validations (0: never)", min=0)
    max_sequences: int = setting(0, "validate on the first N sequences only (0: all)", min=0)
    crop_border: int = setting(0, "pixels cut from each border before PSNR/SSIM", min=0)
    images: int = setting(2, "comparison images (bicubic | model | GT) logged per validation", min=0)
    batch_size: int = setting(4, "frames per validation forward pass", min=1)
    tof: bool = setting(False, "also log tOF (TecoGAN's Farneback flow metric, on the CPU; TDE is always logged)")


@dataclass(frozen=True)
class CheckpointConfig:
    regular_every: int = setting(10000, "steps between regular checkpoints, kept forever (0: none)", min=0)
    best_period: int = setting(10000, "length of the period the best window repeats in", min=1)
    best_window_start: int = setting(2000, "best checkpoints are considered from this step of each period", min=0)
    best_window_end: int = setting(8000, "... up to this step of each period", min=0)
    rolling_every: int = setting(1000, "steps between rolling checkpoints (0: none)", min=0)
    rolling_keep: int = setting(3, "rolling checkpoints kept; older ones are removed (logged)", min=1)
    save_final: bool = setting(True, "save a checkpoint after the last step")


@dataclass(frozen=True)
class EMAConfig:
    enabled: bool = setting(False, "keep an fp32 exponential moving average of the weights")
    decay: float = setting(0.999, "EMA decay per optimizer step", min=0.0, max=1.0)


@dataclass(frozen=True)
class AutotuneConfig:
    enabled: bool = setting(True, "search batch size and memory settings on the GPU before training")
    vram_cap: float = setting(0.8, "peak reserved memory must stay under this fraction of the GPU", min=0.05, max=1.0)
    max_candidates: int = setting(8, "settings tried at most", min=1, max=8)
    trial_steps: int = setting(3, "measured steps per candidate (after one warm-up step)", min=1)
    time_budget_s: float = setting(110.0, "stop trying candidates after this many seconds", min=1.0)
    choose: str = setting("fastest", "among fitting candidates: fastest clips/s, or first in priority",
                          choices=("fastest", "priority"))


@dataclass(frozen=True)
class TrainConfig:
    total_steps: int = setting(300000, "optimizer steps of the whole run", min=1)
    global_batch_size: int = setting(0, "clips per optimizer step over all ranks (0: batch_size_per_gpu x ranks)", min=0)
    mixed_precision: str = setting("auto", "auto (bf16 on GPUs that have it, else fp16), bf16, fp16, no",
                                   choices=("auto", "bf16", "fp16", "no"))
    profile: str = setting("auto", "auto (6gb on a single GPU of <= 8 GB), standard, 6gb",
                           choices=("auto", "standard", "6gb"))
    activation_checkpointing: bool = setting(False, "recompute propagation trunks in backward to save memory")
    channels_last: bool = setting(True, "NHWC memory layout on GPU (faster convolutions with tensor cores)")
    compile: bool = setting(False, "torch.compile the model (falls back to eager when unavailable)")
    log_every: int = setting(50, "steps between scalar logs (each costs one host sync)", min=1)
    status_every: int = setting(5, "steps between rewrites of training_status.txt", min=1)
    memory_fraction: float = setting(0.0, "cap this process's CUDA memory to this fraction (0: no cap)", min=0.0, max=1.0)


# The experiment trackers Accelerate speaks to (accelerate.tracking); `tensorboard` is the Observer's own writer.
TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio")


@dataclass(frozen=True)
class LogConfig:
    trackers: tuple[str, ...] = setting(("tensorboard",), "where scalars (and images, where the tracker takes them) "
                                        "go, a list: " + ", ".join(TRACKERS), choices=TRACKERS)
    project: str = setting("vsrpp-dist", "the trackers' project (W&B project, MLflow experiment, Comet project)")
    run_name: str = setting("", "the run's name in the trackers (empty: the run directory's name)")
    wandb_entity: str = setting("", "W&B team or user (empty: WANDB_ENTITY, else your default entity)")
    wandb_offline: bool = setting(False, "W&B writes RUN/wandb only, `wandb sync` uploads it later "
                                  "(as WANDB_MODE=offline)")
    mlflow_tracking_uri: str = setting("", "MLflow server or store (empty: MLFLOW_TRACKING_URI, else a file store "
                                       "in RUN/mlruns)")

    def __post_init__(self) -> None:
        uri = urllib.parse.urlsplit(self.mlflow_tracking_uri)
        if uri.username or uri.password or uri.query:
            # as for data locations: the config is copied into RUN/config.yaml, the log and every checkpoint
            raise ConfigError("mlflow_tracking_uri: credentials do not belong in the config (it is written into "
                              "RUN/config.yaml and every checkpoint); set MLFLOW_TRACKING_USERNAME and "
                              "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN), or MLFLOW_TRACKING_URI")


@dataclass(frozen=True)
class Config:
    run: RunConfig = dataclasses.field(default_factory=RunConfig, metadata={"doc": "where and with which seed"})
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig, metadata={"doc": "the network"})
    data: DataConfig = dataclasses.field(default_factory=DataConfig, metadata={"doc": "shards and the stream"})
    degradation: DegradationConfig = dataclasses.field(default_factory=DegradationConfig,
                                                       metadata={"doc": "how the model's input frames are made"})
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig, metadata={"doc": "optimizer and LR curve"})
    plateau: PlateauConfig = dataclasses.field(default_factory=PlateauConfig, metadata={"doc": "plateau LR"})
    loss: LossConfig = dataclasses.field(default_factory=LossConfig, metadata={"doc": "HybridLoss base weights"})
    adaptive: AdaptiveConfig = dataclasses.field(default_factory=AdaptiveConfig, metadata={"doc": "adaptive system"})
    guard: GuardConfig = dataclasses.field(default_factory=GuardConfig, metadata={"doc": "non-finite guard"})
    alignment_training: AlignmentTrainingConfig = dataclasses.field(
        default_factory=AlignmentTrainingConfig,
        metadata={"doc": "training the explicit alignment (flow, flow_deform)"})
    validation: ValidationConfig = dataclasses.field(default_factory=ValidationConfig, metadata={"doc": "validation"})
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig, metadata={"doc": "checkpoint policy"})
    ema: EMAConfig = dataclasses.field(default_factory=EMAConfig, metadata={"doc": "weight EMA"})
    init: InitConfig = dataclasses.field(default_factory=InitConfig, metadata={"doc": "start from existing weights"})
    autotune: AutotuneConfig = dataclasses.field(default_factory=AutotuneConfig, metadata={"doc": "auto-tune"})
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig, metadata={"doc": "the training loop"})
    log: LogConfig = dataclasses.field(default_factory=LogConfig, metadata={"doc": "experiment trackers"})

    def __post_init__(self) -> None:
        ck = self.checkpoint
        if ck.best_window_end < ck.best_window_start or ck.best_window_end > ck.best_period:
            raise ConfigError("checkpoint.best_window_end: must lie between best_window_start and best_period "
                              f"(got {ck.best_window_start}..{ck.best_window_end} of {ck.best_period})")
        if self.optim.lr_min > self.optim.lr_peak:
            raise ConfigError(f"optim.lr_min: {self.optim.lr_min} is above optim.lr_peak {self.optim.lr_peak}")
        if self.adaptive.sharpness_off < self.adaptive.sharpness_on:
            raise ConfigError("adaptive.sharpness_off: must be >= adaptive.sharpness_on (hysteresis)")


# --------------------------------------------------------------------------------------------------
# Loading, overriding, validating


def _is_config_class(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(key: str, value: Any, tp: Any, meta: typing.Mapping[str, Any]) -> Any:
    """Convert a YAML or command-line value to the field's type, or raise naming the key."""
    origin = typing.get_origin(tp)
    if origin is tuple and typing.get_args(tp)[1:] == (Ellipsis,):  # a list: [a, b] or "a,b"
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        items = tuple(_coerce(key, item, typing.get_args(tp)[0], meta) for item in value)
        twice = sorted({item for item in items if items.count(item) > 1})
        if twice:
            raise ConfigError(f"{key}: {twice[0]} is named twice")
        return items
    if origin is tuple:  # a range: [low, high], each end within the field's bounds, low <= high
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a range [low, high], got {value!r}")
        low, high = (_coerce(key, v, a, meta) for v, a in zip(value, args))
        if low > high:
            raise ConfigError(f"{key}: the range [{low}, {high}] has its low end above its high end")
        return (low, high)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        tp = args[0]
    if tp is bool:
        if isinstance(value, bool):
            out = value
        elif isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            out = value.lower() in ("true", "yes", "on", "1")
        else:
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            out = int(value)
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            out = float(value)  # YAML reads "1e-4" as a string; float() takes it
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if out != out or out in (float("inf"), float("-inf")):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    elif tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        out = str(value)
    else:
        raise TypeError(f"unsupported config type {tp!r} for {key}")
    if meta.get("choices") is not None and out not in meta["choices"]:
        allowed = ", ".join(str(c) for c in meta["choices"])
        raise ConfigError(f"{key}: {out!r} is not one of {allowed}")
    if meta.get("min") is not None and out < meta["min"]:
        raise ConfigError(f"{key}: {out!r} is below the minimum {meta['min']}")
    if meta.get("max") is not None and out > meta["max"]:
        raise ConfigError(f"{key}: {out!r} is above the maximum {meta['max']}")
    return out


def build(cls: type, values: Any, prefix: str = "") -> Any:
    """A config (or one section, `cls`) from plain values: YAML, JSON, a checkpoint's model_config. Every key
    is coerced and checked as on load; a bad or unknown one is refused naming `prefix` + its key."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {key_of(f): f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (known under {prefix.rstrip('.') or 'the top level'}: "
                          f"{', '.join(sorted(fields))})")
    kwargs = {}
    for name, field in fields.items():
        key = prefix + name
        tp = hints[field.name]
        if _is_config_class(tp):
            given = values.get(name)
            if field.default_factory is not dataclasses.MISSING and (given is None or isinstance(given, dict)):
                # the section's own defaults (e.g. the second degradation order's) under what was given
                given = _merged(config_to_dict(field.default_factory()), given or {})
            kwargs[field.name] = build(tp, given, key + ".")
        elif name in values:
            kwargs[field.name] = _coerce(key, values[name], tp, field.metadata)
    try:
        return cls(**kwargs)
    except ConfigError as err:  # a section's own check names its key relative to the section
        if prefix and not str(err).startswith(prefix):
            raise ConfigError(prefix + str(err)) from None
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{prefix.rstrip('.')}: {err}") from None


def _merged(defaults: dict, given: dict) -> dict:
    out = dict(defaults)
    for k, v in given.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """`model.channels=64` -> (["model", "channels"], 64); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"{text}: overrides look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"{text}: overrides look like key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def shipped_config(path: Path) -> Path:
    """`path` itself when it is a file; else, for `configs/NAME.yaml` or a bare `NAME` (`--config demo`),
    the shipped config of that name, so an installed package finds its configs from any folder."""
    if path.is_file():
        return path
    if path.parent in (Path("."), Path("configs")):
        for candidate in (CONFIG_DIR / path.name, CONFIG_DIR / f"{path.name}.yaml"):
            if candidate.is_file():
                return candidate
    shipped = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"{path}: config file not found (shipped configs, by name: {shipped})")


# Sections renamed since configs were written: old name -> new name. A run's config.yaml or a command line
# from before the rename still loads, with one note naming the new key (`alignment:` held the explicit
# alignment's training settings and read as if it were `model.alignment`).
RENAMED_SECTIONS = {"alignment": "alignment_training"}


def with_renamed_sections(tree: dict[str, Any]) -> dict[str, Any]:
    """The tree with each old section name replaced by its new one (a note on stderr says so). Both
    names may be given (an old config.yaml and a new override); one key set differently under each is
    refused, since one value would silently win."""
    for old, new in RENAMED_SECTIONS.items():
        if not isinstance(tree.get(old), dict) or not isinstance(tree.get(new, {}), dict):
            continue  # absent, or not sections: the unknown key or bad value is refused by name as any other
        given_new = tree.get(new) if isinstance(tree.get(new), dict) else {}
        for key in sorted(set(tree[old]) & set(given_new)):
            if tree[old][key] != given_new[key]:
                raise ConfigError(f"{old}.{key}: the section is now {new}, and {new}.{key} is given too with "
                                  f"another value; keep only {new}.{key}")
        note(f"config section {old} is now {new}; {old}.* was read as {new}.* (rename it to silence this)")
        renamed = {**tree[old], **given_new}
        tree = {key: value for key, value in tree.items() if key not in (old, new)}
        tree[new] = renamed
    return tree


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Read a YAML config (or the defaults), apply `key.sub=value` overrides, validate everything."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = shipped_config(Path(path))
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
        tree = loaded or {}
    for text in overrides:
        parts, value = parse_override(text)
        node = tree
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return build(Config, with_renamed_sections(tree), "")


def key_of(field: dataclasses.Field) -> str:
    """The key users write for a field: its name, less the trailing underscore of a Python keyword
    (`init.from` is the field `from_`)."""
    return field.name[:-1] if field.name.endswith("_") else field.name


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dicts and lists (ranges become [low, high]) under the users' keys: what YAML, JSON and
    checkpoints hold."""
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {key_of(f): plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return [plain(v) for v in value] if isinstance(value, (tuple, list)) else value

    return plain(cfg)


def recorded_config(cfg: Any) -> dict[str, Any]:
    """The tree as it is written down (RUN/config.yaml, training.log, checkpoint metadata, trackers):
    credentials in any value masked (masking.mask), since these files are shared and copied."""
    return mask_tree(config_to_dict(cfg))


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(recorded_config(cfg), sort_keys=False)


def describe(cls: type = Config, prefix: str = "", defaults: Any = None) -> list[str]:
    """One line per key: name, default and doc (for `--help-config`)."""
    lines = []
    hints = typing.get_type_hints(cls)
    defaults = cls() if defaults is None else defaults
    for field in dataclasses.fields(cls):
        key = prefix + key_of(field)
        value = getattr(defaults, field.name)
        if _is_config_class(hints[field.name]):
            lines += describe(hints[field.name], key + ".", value)
        else:
            extra = f" [{'|'.join(map(str, field.metadata['choices']))}]" if field.metadata.get("choices") else ""
            shown = list(value) if isinstance(value, tuple) else value
            lines.append(f"{key} = {shown!r}{extra}  # {field.metadata.get('doc', '')}")
    return lines
