"""Starting a new run from existing weights (`init.from`): fine-tuning on one's own footage, the second
stage of the real-world recipe, or another alignment on a trained trunk.

Everything here happens before the run directory is touched, so a wrong path, a file that is not
weights, NaN weights or a model that does not fit cost one line and leave nothing behind:

1. `find_source`: what the user named, resolved to weights: a run directory (its best checkpoint, else
   its newest), a checkpoint folder or a symlink to one, or a weights file.
2. `read_initial_weights`: the EMA or the live weights (`init.weights`), read as data only (weights.py:
   safetensors, or a tensors-only legacy file; nothing is unpickled).
3. `match`: strict (the default) needs the same architecture: a difference is one line naming the config
   values that differ; `init.strict=false` loads every tensor whose name and shape match and reports
   the rest (`MatchReport`).

The run that starts from them is new in every other way: step 0, a fresh optimizer and schedule (its
own warm-up), fresh adaptive and plateau state, its own data seed. Resuming such a run restores its own
checkpoint and never reads `init.from` again.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import Config, architecture_of, config_to_dict
from ..errors import CheckpointError, ConfigError
from ..model.architecture import build_model, module_group
from ..weights import LEGACY_WEIGHTS_FILE, WEIGHTS_FILE, Weights, read_weights, weights_file_in
from .checkpoint import BEST_LINK, list_complete, read_info
from .run_dir import CHECKPOINTS
from .state_files import TRAINING_STATE_FILE, read_tree


@dataclass(frozen=True)
class Source:
    """What `init.from` names, resolved: the checkpoint folder (None for a bare weights file) and the
    file holding the exported weights."""

    given: str
    checkpoint: Path | None
    weights_file: Path
    meta: dict = field(default_factory=dict)  # the checkpoint's meta.json (its run's config and shape)


def find_source(text: str) -> Source:
    path = Path(text).expanduser()
    if not path.exists():
        raise ConfigError(f"init.from: {text}: no such run directory, checkpoint or weights file")
    resolved = path.resolve()
    if resolved.is_dir() and (resolved / CHECKPOINTS).is_dir() and read_info(resolved) is None:
        # a run directory: its best checkpoint when it has one (what it validated best), else its newest
        best = resolved / BEST_LINK
        if best.exists() and read_info(best.resolve()) is not None:
            resolved = best.resolve()
        else:
            complete = list_complete(resolved)
            if not complete:
                raise ConfigError(f"init.from: {text}: a run directory without a complete checkpoint")
            resolved = complete[0].path
    if resolved.is_dir():
        info = read_info(resolved)
        if info is None:
            if not any((resolved / name).is_file() for name in (WEIGHTS_FILE, LEGACY_WEIGHTS_FILE)):
                raise ConfigError(f"init.from: {text}: not a run directory, a checkpoint or a weights file")
            return Source(text, None, weights_file_in(resolved))
        return Source(text, resolved, weights_file_in(resolved), info.meta)
    return Source(text, None, resolved)


@dataclass
class InitialWeights:
    """The weights a run starts from and where they came from."""

    source: Source
    weights: Weights
    kind: str  # "ema" or "raw"

    @property
    def file(self) -> Path:
        """The file the tensors were read from: the weights file, or the training state for raw weights."""
        return self.weights.path

    @property
    def sha256(self) -> str:
        return self.weights.sha256  # hashed once, when first recorded

    @property
    def model_config(self) -> dict | None:
        return self.weights.model_config

    def provenance(self) -> list[dict]:
        """This run's start, then the chain its source started from (nearest first)."""
        meta = self.source.meta
        run_cfg = meta.get("config", {}) if isinstance(meta.get("config"), dict) else {}
        entry = {"from": self.source.given, "file": str(self.file), "sha256": self.sha256, "weights": self.kind,
                 "step": self.weights.step, "model_config": self.model_config,
                 "degradation": (run_cfg.get("degradation") or {}).get("kind"),
                 "train_shards": (run_cfg.get("data") or {}).get("train_shards"),
                 "run_dir": str(self.source.checkpoint.parent.parent) if self.source.checkpoint else None}
        return [entry, *self.weights.provenance]


def read_initial_weights(cfg: Config) -> InitialWeights | None:
    """The weights `init.from` names, checked, or None when it names none."""
    init = cfg.init
    if not init.from_:
        if init.freeze:
            raise ConfigError("init.freeze: freezing keeps loaded weights fixed; set init.from too")
        return None
    if init.freeze and not init.freeze_steps:
        raise ConfigError(f"init.freeze: {', '.join(init.freeze)} given but init.freeze_steps is 0 (nothing would "
                          "stay fixed)")
    source = find_source(init.from_)
    try:
        exported = read_weights(source.weights_file, need_config=False)
    except CheckpointError as err:
        raise ConfigError(f"init.from: {err}") from None
    kind = "ema" if exported.ema else "raw"
    if init.weights == "ema" and not exported.ema:
        raise ConfigError(f"init.from: {init.from_}: has no EMA weights (its run had ema.enabled=false); "
                          "use init.weights=raw or auto")
    weights = exported
    if init.weights == "raw" and exported.ema:
        if source.checkpoint is None or not (source.checkpoint / TRAINING_STATE_FILE).is_file():
            raise ConfigError(f"init.from: {init.from_}: holds only the EMA weights; use init.weights=ema or auto")
        file = source.checkpoint / TRAINING_STATE_FILE
        try:
            tree = read_tree(file)
        except CheckpointError as err:
            raise ConfigError(f"init.from: {source.checkpoint}: {err}") from None
        weights = Weights(file, tree["model"], exported.model_config, False, exported.step, exported.provenance)
        kind = "raw"
    return InitialWeights(source, weights, kind)


# -- matching -------------------------------------------------------------------------------------------------


@dataclass
class MatchReport:
    """What of the source fits the model: tensors loaded, new in the model, skipped for a different shape,
    unused from the source."""

    shapes: dict[str, torch.Size]  # the model's tensors
    loaded: list[str]
    new: list[str]
    skipped: list[tuple[str, tuple, tuple]]  # name, source shape, model shape
    unused: list[str]

    @property
    def loaded_parameters(self) -> int:
        return sum(self.shapes[n].numel() for n in self.loaded)

    @property
    def model_parameters(self) -> int:
        return sum(s.numel() for s in self.shapes.values())

    def lines(self) -> list[str]:
        share = 100.0 * self.loaded_parameters / max(self.model_parameters, 1)
        out = [f"init: loaded {len(self.loaded)} of {len(self.shapes)} tensors, {self.loaded_parameters:,} of "
               f"{self.model_parameters:,} parameters ({share:.1f}% of the model)"]
        if self.new:
            out.append("init: new (kept as initialised): " + _by_group(self.new, self.shapes))
        for name, source_shape, model_shape in self.skipped:
            out.append(f"init: skipped for shape: {name}: source {list(source_shape)}, model {list(model_shape)}")
        if self.unused:
            out.append(f"init: unused from the source: {len(self.unused)} tensors (" +
                       ", ".join(sorted({name.split('.', 1)[0] for name in self.unused})) + ")")
        return out


def _by_group(names: list[str], shapes: dict[str, torch.Size]) -> str:
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for name in names:
        counts[module_group(name)][0] += 1
        counts[module_group(name)][1] += shapes[name].numel()
    return ", ".join(f"{group} ({n} tensors, {p:,} parameters)" for group, (n, p) in counts.items())


def model_shapes(cfg: Config) -> dict[str, torch.Size]:
    """The run's model's tensor shapes, from a model built on the meta device (no memory, no RNG)."""
    with torch.device("meta"):
        model = build_model(cfg.model)
    return {name: tensor.shape for name, tensor in model.state_dict().items()}


def config_differences(saved: dict, now: dict) -> list[str]:
    """`model.KEY: checkpoint A, this run B` for every architecture value that differs."""
    saved_arch, now_arch = architecture_of(saved), architecture_of(now)
    keys = list(dict.fromkeys([*now_arch, *saved_arch]))
    return [f"model.{key}: checkpoint {saved_arch.get(key)!r}, this run {now_arch.get(key)!r}"
            for key in keys if saved_arch.get(key) != now_arch.get(key)]


def match(cfg: Config, initial: InitialWeights) -> MatchReport:
    """Which tensors load. Strict: all of them, or one line naming what differs."""
    shapes = model_shapes(cfg)
    source = initial.weights.state_dict
    loaded = [n for n in shapes if n in source and source[n].shape == shapes[n]]
    skipped = [(n, tuple(source[n].shape), tuple(shapes[n])) for n in shapes if n in source and source[n].shape != shapes[n]]
    new = [n for n in shapes if n not in source]
    unused = [n for n in source if n not in shapes]
    report = MatchReport(shapes, loaded, new, skipped, unused)
    if cfg.init.strict and (skipped or new or unused):
        hint = "or set init.strict=false to load the tensors whose names and shapes match"
        if initial.model_config is not None:
            differences = config_differences(initial.model_config, config_to_dict(cfg)["model"])
            if differences:
                raise ConfigError(f"init.from: {initial.source.given}: another architecture: "
                                  f"{'; '.join(differences)}; set them to match, {hint}")
        first = (f"{skipped[0][0]} is {list(skipped[0][1])} there, {list(skipped[0][2])} here" if skipped else
                 f"{new[0]} is missing there" if new else f"{unused[0]} is not in this model")
        raise ConfigError(f"init.from: {initial.source.given}: the weights do not fit this model "
                          f"({len(new)} missing, {len(skipped)} of another shape, {len(unused)} unused; {first}); "
                          f"{hint}")
    return report


def load_into(model: torch.nn.Module, initial: InitialWeights, report: MatchReport) -> None:
    """Copy the matched tensors into the model (on its device, in its dtype)."""
    subset = {name: initial.weights.state_dict[name] for name in report.loaded}
    missing, unexpected = model.load_state_dict(subset, strict=False)
    assert not unexpected and set(missing) == set(report.new) | {n for n, _, _ in report.skipped}, (missing, unexpected)


def describe(initial: InitialWeights) -> str:
    step = f"step {initial.weights.step}" if initial.weights.step >= 0 else "unknown step"
    return (f"init: starting from {initial.kind} weights of {initial.file} ({step}, sha256 "
            f"{initial.sha256[:12]}); a new run: step 0, new optimizer, schedule and adaptive state")

