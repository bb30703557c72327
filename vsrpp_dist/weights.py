"""The weights file: what a checkpoint shares, and the one reader that `init.from`, `upscale`,
`evaluate`, `export` and the benchmarks use.

`model.safetensors` holds the model's tensors (the EMA's when the run keeps one) and, as safetensors
metadata (strings), what is needed to build and trust them: `format` and `version`, `model_config`
(JSON: the config section that builds the architecture), `ema`, `step` and `provenance` (JSON: the
chain of models this one started from). Loading a safetensors file parses a JSON header and copies
tensor bytes; it cannot run code, which is why it is the format models are shared in.

Weights files written before safetensors (`weights.pt`, a `torch.save` of a dict) stay readable:
`torch.load(weights_only=True)` accepts tensors and plain containers only and refuses anything that
would construct another object, so a pickle carrying code is refused without running it.

Every reader gets the same checks: a file that is not weights, tensors that are not finite (NaN/Inf
weights produce NaN frames and would train to nothing), a missing model description where one is
needed: one line each, naming the file.
"""

from __future__ import annotations

import functools
import json
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError
from .files import file_sha256

WEIGHTS_FILE = "model.safetensors"
LEGACY_WEIGHTS_FILE = "weights.pt"
WEIGHTS_FORMAT = "vsrpp-weights"
WEIGHTS_VERSION = 2



@dataclass
class Weights:
    """A weights file, read: its tensors and the description that came with them."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    model_config: dict | None  # None: a bare state dict (e.g. weights from elsewhere)
    ema: bool = False
    step: int = -1
    provenance: list[dict] = field(default_factory=list)  # the models this one started from, nearest first

    @functools.cached_property
    def sha256(self) -> str:
        return file_sha256(self.path)  # read once, however often a result records it


def save_weights(path: Path, state_dict: dict[str, torch.Tensor], *, model_config: dict, ema: bool, step: int,
                 provenance: list[dict]) -> None:
    """Write `model.safetensors`: fp32, contiguous, on the CPU, so any machine reads it as it is."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().float().cpu().contiguous() for k, v in state_dict.items()}
    metadata = {"format": WEIGHTS_FORMAT, "version": str(WEIGHTS_VERSION), "model_config": json.dumps(model_config),
                "ema": json.dumps(bool(ema)), "step": str(int(step)), "provenance": json.dumps(provenance)}
    save_file(tensors, str(path), metadata=metadata)


def weights_file_in(path: str | Path) -> Path:
    """The weights file a user meant: the file itself, or the one inside a checkpoint folder (or a
    symlink to one)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or weights file")
    resolved = path.resolve()
    if resolved.is_file():
        return resolved
    # A checkpoint of before safetensors holds weights.pt next to Accelerate's own model.safetensors (the
    # live model, without a description): there weights.pt is the exported file.
    for name in (LEGACY_WEIGHTS_FILE, WEIGHTS_FILE):
        if (resolved / name).is_file():
            return resolved / name
    raise CheckpointError(f"{path}: no {WEIGHTS_FILE} (or legacy {LEGACY_WEIGHTS_FILE}) inside; "
                          "not a vsrpp-dist checkpoint?")


def read_weights(path: str | Path, *, need_config: bool = True) -> Weights:
    """The weights at `path` (a file, or a checkpoint folder or a symlink to one), checked. With
    `need_config`, a file without the description of its model is refused (inference must build it)."""
    file = weights_file_in(path)
    try:
        with open(file, "rb") as handle:
            head = handle.read(9)
        size = file.stat().st_size
    except OSError as err:
        raise CheckpointError(f"{file}: cannot read ({err.strerror or err})") from None
    if _looks_like_safetensors(head, size):
        weights = _read_safetensors(file)
    elif head.startswith(_TORCH_ZIP_MAGIC) or head[:1] == _PICKLE_PROTO:
        weights = _read_legacy(file)
    else:
        raise CheckpointError(f"{file}: not a weights file (neither safetensors nor a torch.save file)")
    if need_config and weights.model_config is None:
        raise CheckpointError(f"{file}: holds tensors but no model_config (not written by vsrpp-dist); "
                              "start a run from it with init.from to build the model from the run's config")
    _check_finite(weights)
    return weights


# How a zip-format torch.save file and a bare pickle start: those go to the tensors-only legacy reader.
_TORCH_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """A safetensors file starts with its JSON header's length (8 bytes, little-endian), then the header.
    Anything else (a zip-format torch.save, a bare pickle) goes to the tensors-only legacy reader."""
    if len(head) < 9:
        return False
    header_length = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < header_length <= size - 8


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _read_safetensors(file: Path) -> Weights:
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            state_dict = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as err:  # SafetensorError, OSError, ...: whatever it is, the file is not weights
        raise CheckpointError(f"{file}: not a weights file (neither safetensors nor a tensors-only torch file: "
                              f"{_one_line(err)})") from None
    if metadata.get("format") not in (None, WEIGHTS_FORMAT):
        raise CheckpointError(f"{file}: a safetensors file of format {metadata['format']!r}, not vsrpp-dist weights")
    try:
        model_config = json.loads(metadata["model_config"]) if "model_config" in metadata else None
        provenance = json.loads(metadata.get("provenance", "[]"))
        ema = bool(json.loads(metadata.get("ema", "false")))
        step = int(metadata.get("step", -1))
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{file}: its metadata is damaged ({_one_line(err)})") from None
    if model_config is not None and not isinstance(model_config, dict):
        raise CheckpointError(f"{file}: its model_config is not a mapping")
    return Weights(file, state_dict, model_config, ema, step, provenance if isinstance(provenance, list) else [])


def _read_legacy(file: Path) -> Weights:
    try:
        # a file object, not the name: torch.load picks its reader by a name's suffix (.safetensors)
        with open(file, "rb") as handle, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch notes the pickle protocol of files it then reads or refuses
            payload: Any = torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message goes on to suggest weights_only=False, the one thing never to do with it
        raise CheckpointError(f"{file}: refused: not a tensors-only weights file (unpickling it would construct "
                              "Python objects, which can run code); nothing in it was run") from None
    except Exception as err:  # a truncated or damaged zip
        raise CheckpointError(f"{file}: damaged torch.save file ({_one_line(err)})") from None
    if isinstance(payload, dict) and payload.get("format") == WEIGHTS_FORMAT:
        state_dict = payload.get("state_dict")
        model_config = payload.get("model_config")
        ema, step = bool(payload.get("ema")), int(payload.get("step", -1))
    elif isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        state_dict, model_config, ema, step = payload, None, False, -1  # a bare state dict
    else:
        raise CheckpointError(f"{file}: not a vsrpp-dist weights file")
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{file}: has no state_dict of tensors")
    if model_config is not None and not isinstance(model_config, dict):
        raise CheckpointError(f"{file}: its model_config is not a mapping")
    return Weights(file, state_dict, model_config, ema, step, [])


def _check_finite(weights: Weights) -> None:
    bad = [key for key, tensor in weights.state_dict.items()
           if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        raise CheckpointError(f"{weights.path}: {len(bad)} tensor(s) hold NaN or Inf (first: {bad[0]}); "
                              "these weights cannot be used")
