"""The checkpoint policy and the mechanics that make every checkpoint complete or ignored.

Policy (CheckpointConfig): regular every `regular_every` steps, kept forever; rolling every
`rolling_every` steps, the newest `rolling_keep` kept (older ones removed, each removal logged); best
by KI_PSNR, considered only while `step % best_period` lies in [best_window_start, best_window_end]
(the previous best is removed once superseded); emergency on a signal or a crash; final after the
last step. When several kinds fall on one step, one checkpoint is written, named after the most
durable kind (final > regular > best > rolling), and the symlinks follow it.

Mechanics: every rank writes into `checkpoints/.tmp-NAME` (each rank its own RNG file, rank 0 the
training state, the shareable weights `model.safetensors` and `meta.json`; state_files.py: tensors and
JSON only, so a resume runs no code from a file), and only after a barrier renames the folder to
`checkpoints/NAME`. A rename is atomic, so a folder without the `.tmp-`
prefix and with `meta.json` is complete; anything else is ignored. `RUN/checkpoint_latest` and
`RUN/checkpoint_best` are relative symlinks (replaced atomically), so a moved run directory stays
valid. They live outside `checkpoints/`, which holds checkpoint folders only.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .. import __version__
from ..config import config_to_dict, recorded_config
from ..errors import CheckpointError, CheckpointWriteError
from ..model.architecture import count_parameters
from ..weights import WEIGHTS_FILE, save_weights
from . import model_card
from .run_dir import CHECKPOINTS
from .state_files import (RNG_STATE_PATTERN, load_rng_state, load_training_state, save_rng_state,
                          save_training_state)

META_NAME = "meta.json"
MODEL_CARD = "MODEL_CARD.md"
LATEST_LINK = "checkpoint_latest"
BEST_LINK = "checkpoint_best"
TMP_PREFIX = ".tmp-"
KIND_ORDER = ("rolling", "best", "regular", "final", "emergency")  # later = more durable name
NAME_RE = re.compile(rf"^({'|'.join(KIND_ORDER)})-(\d{{8,}})(?:-(\d+))?$")


class CheckpointContents:
    """What a checkpoint holds, read from the components that own it: the live model, the optimizer
    and every named stateful component (the training state), the exported weights (the EMA's when it is
    on: what validation scores and users upscale with) with where the run started (`provenance`), and
    the description of the run that wrote it (its config and shape, read back on resume)."""

    def __init__(self, cfg, accelerator, model, optimizer, ema, batches, state, provenance: list[dict], *,
                 data_summaries: tuple[dict | None, dict | None] = (None, None)) -> None:
        self.cfg = cfg
        self.accelerator = accelerator
        self.model = model
        self.optimizer = optimizer
        self.ema = ema
        self.batches = batches
        self.state = state
        self.provenance = provenance
        self.data_summaries = data_summaries  # training and validation sets, for the model card
        self.components: dict = {}  # name -> object with state_dict()/load_state_dict(), see register()

    def register(self, **components) -> None:
        self.components.update(components)

    # The provenance is checkpointed like any component: a resumed run keeps where it started.
    def state_dict(self) -> dict:
        return {"provenance": self.provenance}

    def load_state_dict(self, state: dict) -> None:
        self.provenance = state["provenance"]

    def live_model(self) -> torch.nn.Module:
        model = self.accelerator.unwrap_model(self.model)
        return getattr(model, "_orig_mod", model)  # torch.compile wrapper

    def eval_model(self) -> torch.nn.Module:
        """The weights validation and export use: the EMA when enabled, else the live model."""
        return self.ema.module if self.ema.enabled else self.live_model()

    def write_weights(self, folder: Path) -> None:
        model = self.eval_model()
        model = getattr(model, "_orig_mod", model)
        save_weights(folder / WEIGHTS_FILE, model.state_dict(), model_config=config_to_dict(self.cfg)["model"],
                     ema=self.ema.enabled, step=self.state.step, provenance=self.provenance)

    def write_model_card(self, folder: Path, run_dir: Path) -> None:
        model = self.eval_model()
        text = model_card.render(self.cfg, step=self.state.step, parameters=count_parameters(model),
                                 ema=self.ema.enabled, provenance=self.provenance, train_data=self.data_summaries[0],
                                 val_data=self.data_summaries[1], validation=self.state.last_validation,
                                 run_dir=run_dir.name)
        (folder / MODEL_CARD).write_text(text)

    def write_state(self, folder: Path) -> None:
        """This rank's part: its generators; rank 0 also the model, optimizer and components."""
        acc = self.accelerator
        save_rng_state(folder, acc.process_index)
        if acc.is_main_process:
            save_training_state(folder, model=self.live_model(), optimizer=self.optimizer, scaler=acc.scaler,
                                components=self.components, micro_step=acc.step)

    def read_state(self, folder: Path, meta: dict) -> None:
        """Every rank restores the model, optimizer and components (from rank 0's file) and its own
        generators. A crash checkpoint (rank 0 alone) or a changed rank count leaves ranks without a
        generator file of their own: they keep fresh seeds (RELIABILITY.md); anywhere else a missing or
        damaged generator file refuses the checkpoint, which could not be continued exactly."""
        acc = self.accelerator
        acc.step = load_training_state(folder, model=self.live_model(), optimizer=self.optimizer, scaler=acc.scaler,
                                       components=self.components)
        rng_file = folder / RNG_STATE_PATTERN.format(rank=acc.process_index)
        same_ranks = meta.get("world_size") == acc.num_processes and meta.get("collective", True)
        if rng_file.exists() or same_ranks:
            load_rng_state(folder, acc.process_index)

    def description(self) -> dict:
        return {"config": recorded_config(self.cfg), "world_size": self.accelerator.num_processes,
                "num_workers": self.cfg.data.num_workers, "batch_size_per_gpu": self.batches.batch_size_per_gpu,
                "grad_accum_steps": self.batches.grad_accum_steps, "batches_consumed": self.state.batches_consumed,
                "provenance": self.provenance, "torch": torch.__version__, "vsrpp_dist": __version__}


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    kind: str
    step: int
    meta: dict[str, Any]

    @property
    def saved_at(self) -> float:
        return float(self.meta.get("saved_at", 0.0))


def read_info(path: Path) -> CheckpointInfo | None:
    """The checkpoint at `path` if it is complete, else None."""
    match = NAME_RE.match(path.name)
    meta_path = path / META_NAME
    # A symbolic link is never one of the run's checkpoints, whatever it points to: pruning it or
    # resuming from it by name would act on someone else's folder (`--resume PATH` follows links).
    if not match or path.is_symlink() or not path.is_dir() or not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return CheckpointInfo(path, match.group(1), int(match.group(2)), meta)


def list_complete(run_dir: Path) -> list[CheckpointInfo]:
    """Complete checkpoints, newest first (by save time, then step)."""
    folder = run_dir / CHECKPOINTS
    if not folder.is_dir():
        return []
    infos = [info for p in folder.iterdir() if (info := read_info(p)) is not None]
    return sorted(infos, key=lambda i: (i.saved_at, i.step), reverse=True)


def point_symlink(link: Path, target: Path) -> None:
    """Make `link` a relative symlink to `target`, replacing any old one atomically."""
    relative = os.path.relpath(target, link.parent)
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(relative, tmp)
    os.replace(tmp, link)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a folder, a symlink to one, or a file inside one."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    resolved = path.resolve()
    if resolved.is_file():
        resolved = resolved.parent
    if read_info(resolved) is None:
        raise CheckpointError(f"{path}: not a complete checkpoint (no {META_NAME}; an interrupted save?)")
    return resolved


class CheckpointManager:
    def __init__(self, run_dir: Path, accelerator, cfg, observer, contents: CheckpointContents) -> None:
        self.run_dir = run_dir
        self.folder = run_dir / CHECKPOINTS
        self.accelerator = accelerator
        self.cfg = cfg
        self.observer = observer
        self.contents = contents
        self.best_metric = -math.inf
        self.best_step = -1
        self.last_saved: str = ""
        self.failed_final = False  # the end-of-training checkpoint could not be written
        if accelerator.is_main_process:
            self.folder.mkdir(parents=True, exist_ok=True)
            stale = sorted(p.name for p in self.folder.iterdir() if p.name.startswith(TMP_PREFIX) and not p.is_symlink())
            if stale:
                observer.warn(f"{self.folder}: incomplete checkpoint folders from an interrupted save are ignored: "
                              f"{', '.join(stale)}")
            links = sorted(p.name for p in self.folder.iterdir() if p.is_symlink())
            if links:
                observer.warn(f"{self.folder}: symbolic links are not checkpoints of this run and are ignored "
                              f"(never removed, never resumed from without --resume PATH): {', '.join(links)}")
        accelerator.wait_for_everyone()

    # -- policy ---------------------------------------------------------------------------------------

    def in_best_window(self, step: int) -> bool:
        position = step % self.cfg.best_period
        return self.cfg.best_window_start <= position <= self.cfg.best_window_end

    def due(self, step: int, ki_psnr: float | None = None, final: bool = False) -> list[str]:
        """The kinds a checkpoint at `step` would be (empty: none is due)."""
        kinds = []
        if self.cfg.rolling_every and step % self.cfg.rolling_every == 0:
            kinds.append("rolling")
        if ki_psnr is not None and self.in_best_window(step) and ki_psnr > self.best_metric:
            kinds.append("best")
        if self.cfg.regular_every and step % self.cfg.regular_every == 0:
            kinds.append("regular")
        if final and self.cfg.save_final:
            kinds.append("final")
        return kinds

    def maybe_save(self, step: int, ki_psnr: float | None = None, final: bool = False) -> Path | None:
        """Save what the policy asks for at this step. A failed write is reported and training goes
        on (the disk may free up; the previous checkpoint is intact); the next due save tries again."""
        kinds = self.due(step, ki_psnr, final)
        if not kinds:
            return None
        previous_best = (self.best_metric, self.best_step)
        if "best" in kinds:  # before saving: the checkpoint's own state must know it is the best
            self.best_metric, self.best_step = float(ki_psnr), step
        try:
            path = self.save(step, kinds)
        except CheckpointWriteError as err:
            self.best_metric, self.best_step = previous_best
            self.failed_final = final
            self.observer.error(f"{err}; {'training is over' if final else 'training continues'}")
            return None
        self.failed_final = False
        return path

    # -- mechanics ------------------------------------------------------------------------------------

    def _name(self, step: int, kind: str) -> str:
        name = f"{kind}-{step:08d}"
        n = 1
        # lexists: a symbolic link (even a dangling one) under that name is not ours to replace, nor is one
        # under its .tmp- name (a .tmp- folder left by a crash is ours, and the save replaces it)
        while os.path.lexists(self.folder / name) or (self.folder / f"{TMP_PREFIX}{name}").is_symlink():
            n += 1
            name = f"{kind}-{step:08d}-{n}"
        return name

    def save(self, step: int, kinds: list[str], collective: bool = True) -> Path:
        """Write a checkpoint. Collective: every rank must call it at the same point. Non-collective
        (after a crash, when other ranks may be gone): rank 0 writes alone and other ranks return.
        A failed write (disk full, I/O error) on any rank raises CheckpointWriteError on every rank,
        after our partial folder is removed: the previous checkpoint and the symlinks stay as they were."""
        primary = max(kinds, key=KIND_ORDER.index)
        acc = self.accelerator
        main = acc.is_main_process
        if not collective and not main:
            return self.folder
        name = self._name(step, primary) if main else ""
        if collective:
            name = _broadcast_str(acc, name)
        tmp = self.folder / f"{TMP_PREFIX}{name}"
        final_path = self.folder / name
        if main and tmp.exists():
            shutil.rmtree(tmp)  # our own leftover from a crash at this very name; never a complete checkpoint
        if collective:
            acc.wait_for_everyone()
        error = self._write(tmp, name, step, kinds, collective)
        # Every rank's files are on disk (or one failed) before the folder may count as complete.
        failed = _any_rank(acc, error is not None) if collective else error is not None
        if failed:
            if main:
                shutil.rmtree(tmp, ignore_errors=True)  # our partial write, never a usable checkpoint
            reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}" if error else \
                "another rank could not write its part"
            raise CheckpointWriteError(f"checkpoint {name} could not be written ({reason}); "
                                       f"{self.last_saved or 'no earlier checkpoint'} stays the latest")
        if main:
            os.replace(tmp, final_path)  # the commit point: from here on the checkpoint exists, whatever fails
            self.last_saved = name
            self.observer.info(f"checkpoint saved: {final_path.relative_to(self.run_dir)} ({', '.join(kinds)})")
            self._after_commit(final_path, kinds)
        if collective:
            self.last_saved = _broadcast_str(acc, self.last_saved)
            acc.wait_for_everyone()
        return final_path

    def _write(self, tmp: Path, name: str, step: int, kinds: list[str], collective: bool) -> Exception | None:
        """This rank's part of a checkpoint; the error instead of raising it, so all ranks can agree."""
        try:
            tmp.mkdir(parents=True, exist_ok=True)
            self.contents.write_state(tmp)
            if self.accelerator.is_main_process:
                self.contents.write_weights(tmp)
                if {"best", "final"} & set(kinds):
                    self.contents.write_model_card(tmp, self.run_dir)
                meta = {"format": "vsrpp-checkpoint", "version": 1, "name": name, "kinds": kinds, "step": step,
                        "saved_at": time.time(), "collective": collective, **self.contents.description()}
                (tmp / META_NAME).write_text(json.dumps(meta, indent=1, default=str))
        except Exception as err:  # ENOSPC surfaces as OSError, RuntimeError (torch) or SafetensorError
            return err
        return None

    def _after_commit(self, final_path: Path, kinds: list[str]) -> None:
        """Symlinks and pruning: a failure here is reported, but the checkpoint is written and says so."""
        try:
            point_symlink(self.run_dir / LATEST_LINK, final_path)
            if "best" in kinds:
                point_symlink(self.run_dir / BEST_LINK, final_path)
        except OSError as err:
            self.observer.warn(f"checkpoint {final_path.name} is written, but the symlinks to it could not be "
                               f"updated ({err.strerror or err}); --resume still finds it")
        self._prune()

    def _prune(self) -> None:
        """Keep: regular, final and emergency checkpoints; the newest `rolling_keep` that were rolling;
        the symlink targets. Remove the rest (old rolling ones, superseded best ones), logging each."""
        protected = {p.resolve() for p in (self.run_dir / LATEST_LINK, self.run_dir / BEST_LINK) if p.exists()}
        infos = list_complete(self.run_dir)
        rolling = [i for i in infos if "rolling" in i.meta.get("kinds", [i.kind])]
        keep = {i.path for i in rolling[: self.cfg.rolling_keep]}
        for info in infos:
            kinds = set(info.meta.get("kinds", [info.kind]))
            if kinds & {"regular", "final", "emergency"} or info.path in keep or info.path.resolve() in protected:
                continue
            try:
                shutil.rmtree(info.path)
            except OSError as err:  # kept, and said: pruning never fails a save that is already complete
                self.observer.warn(f"checkpoint {info.path.name} could not be removed by policy "
                                   f"({err.strerror or err}); it stays")
                continue
            self.observer.info(f"checkpoint removed by policy: {info.path.relative_to(self.run_dir)} "
                               f"({', '.join(sorted(kinds))}; keeping {self.cfg.rolling_keep} rolling and the best)")

    # -- loading --------------------------------------------------------------------------------------

    def candidates(self, request: str) -> list[Path]:
        if request == "latest":
            infos = list_complete(self.run_dir)
            if not infos:
                raise CheckpointError(f"{self.folder}: no complete checkpoint to resume from")
            return [i.path for i in infos]
        return [resolve_checkpoint(request)]

    def load(self, request: str, check: Callable[[dict], None]) -> CheckpointInfo:
        """Load the newest usable checkpoint ("latest") or the given one. A broken or incompatible newest
        checkpoint is skipped with a warning in favour of the next older; a given one fails loudly. Every
        rank reads its part, and the ranks agree: a checkpoint one rank cannot read is skipped by all."""
        errors = []
        for path in self.candidates(request):
            info = read_info(path)
            error = None
            try:
                check(info.meta)
                self.contents.read_state(path, info.meta)
            except Exception as err:  # CheckpointError, or what a damaged file raises that nothing expected
                error = err
            if _any_rank(self.accelerator, error is not None):
                reason = str(error) if error is not None else "another rank could not read its part"
                message = f"{path.name}: {reason.splitlines()[0] if reason else 'unreadable'}"
                if request != "latest":
                    raise CheckpointError(f"cannot resume from {message}; pick another checkpoint "
                                          f"(--resume PATH) or start over with --fresh") from None
                self.observer.warn(f"checkpoint {message}; trying the next older one")
                errors.append(message)
                continue
            if errors:
                self.observer.warn(f"resumed from the older checkpoint {path.name} after skipping {len(errors)}")
            return info
        raise CheckpointError("no usable checkpoint: " + "; ".join(errors) + " (start over with --fresh)")

    # -- state (registered for checkpointing) --------------------------------------------------------

    def state_dict(self) -> dict:
        return {"best_metric": self.best_metric, "best_step": self.best_step, "last_saved": self.last_saved}

    def load_state_dict(self, state: dict) -> None:
        self.best_metric = state["best_metric"]
        self.best_step = state["best_step"]
        self.last_saved = state["last_saved"]


def _any_rank(accelerator, flag: bool) -> bool:
    """True on every rank when it is True on any rank."""
    if accelerator.num_processes == 1:
        return flag
    total = accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), reduction="sum")
    return bool(total.item() > 0)


def _broadcast_str(accelerator, text: str) -> str:
    """Rank 0's string on every rank (names must agree before anyone writes)."""
    if accelerator.num_processes == 1:
        return text
    from accelerate.utils import broadcast_object_list

    box = [text]
    broadcast_object_list(box, from_process=0)
    return box[0]
