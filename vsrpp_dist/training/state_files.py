"""A checkpoint's training state as data: nothing a resume reads can run code.

Accelerate's `save_state`/`load_state` pickle the optimizer, the RNG states and every registered object,
and `load_state` unpickles them with `weights_only=False`: a checkpoint folder from anyone else (or a
replaced file in one's own) runs whatever it carries on `--resume`. So the trainer writes its state
itself, in two kinds of files that hold only tensors and JSON:

  training_state.safetensors   rank 0: the live model's weights (`model/...`), the optimizer's and
                               every component's tensors; the rest of their state as one JSON tree in
                               the file's metadata, with each tensor replaced by its key
  rng_state_RANK.safetensors   every rank: torch's CPU (and CUDA) generator states as tensors, Python's
                               and NumPy's generators as JSON in the metadata

Reading them parses JSON and copies tensor bytes. Each file carries the SHA-256 of its JSON and tensor
bytes, so a flipped byte is found too, not only a broken header. A damaged file is refused with one line
(it is not silently skipped): a resume that cannot restore a rank's generators would not continue the
run exactly.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError

TRAINING_STATE_FILE = "training_state.safetensors"
RNG_STATE_PATTERN = "rng_state_{rank}.safetensors"
STATE_FORMAT = "vsrpp-training-state"
STATE_VERSION = 1
# What Accelerate's save_state left in checkpoints written before this format (never read now).
ACCELERATE_STATE_FILES = ("custom_checkpoint_0.pkl", "optimizer.bin", "random_states_0.pkl")


# -- a JSON tree with tensors beside it --------------------------------------------------------------------

def encode(value: Any, tensors: dict[str, torch.Tensor], key: str) -> Any:
    """`value` as JSON, each tensor (and NumPy array) moved into `tensors` under a key derived from
    where it sits. Dicts with non-string keys (the optimizer's per-parameter state) and tuples keep their
    types."""
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        tensors[key] = torch.from_numpy(np.ascontiguousarray(value))
        return {"__ndarray__": key}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: encode(v, tensors, f"{key}/{k}") for k, v in value.items()}
        return {"__items__": [[k, encode(v, tensors, f"{key}/{k}")] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v, tensors, f"{key}/{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [encode(v, tensors, f"{key}/{i}") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{key}: {type(value).__name__} cannot be stored as training state")


def decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__ndarray__" in value:
            return tensors[value["__ndarray__"]].numpy()
        if "__items__" in value:
            return {k: decode(v, tensors) for k, v in value["__items__"]}
        if "__tuple__" in value:
            return tuple(decode(v, tensors) for v in value["__tuple__"])
        return {k: decode(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v, tensors) for v in value]
    return value


def write_tree(path: Path, tree: dict) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    text = json.dumps(encode(tree, tensors, ""))
    metadata = {"format": STATE_FORMAT, "version": str(STATE_VERSION), "tree": text,
                "sha256": _digest(text, tensors)}
    save_file(tensors, str(path), metadata=metadata)


def _digest(text: str, tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256(text.encode())
    for key in sorted(tensors):
        tensor = tensors[key]
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # the bytes as they lie: no copy
    return digest.hexdigest()


def read_tree(path: Path) -> dict:
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"{path.name} is missing")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        if metadata.get("format") != STATE_FORMAT:
            raise ValueError(f"format {metadata.get('format')!r}")
        if _digest(metadata["tree"], tensors) != metadata.get("sha256"):
            raise ValueError("its contents do not match the checksum written with them")
        tree = decode(json.loads(metadata["tree"]), tensors)
    except Exception as err:  # SafetensorError, JSON, KeyError: the file is not what this writer wrote
        text = str(err).strip().splitlines()
        raise CheckpointError(f"{path.name} is damaged ({type(err).__name__}: {text[0] if text else ''})") from None
    if not isinstance(tree, dict):
        raise CheckpointError(f"{path.name} is damaged (not a mapping)")
    return tree


# -- the training state (rank 0) ----------------------------------------------------------------------------

def save_training_state(folder: Path, *, model: torch.nn.Module, optimizer, scaler, components: dict,
                        micro_step: int) -> None:
    """The live model, the optimizer, the fp16 scaler and every named component's `state_dict()`."""
    tree = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "components": {name: component.state_dict() for name, component in components.items()},
            "micro_step": micro_step}
    write_tree(folder / TRAINING_STATE_FILE, tree)


def load_training_state(folder: Path, *, model: torch.nn.Module, optimizer, scaler, components: dict) -> int:
    """Restore what save_training_state wrote; returns the micro-step counter. Every part is checked
    to be present before anything is changed, so a refused checkpoint leaves the run as it was."""
    if not (folder / TRAINING_STATE_FILE).is_file() and any((folder / n).exists() for n in ACCELERATE_STATE_FILES):
        raise CheckpointError("written by an earlier version in Accelerate's pickle format, which resume no longer "
                              "reads (unpickling can run code); start a new run from its weights with "
                              f"init.from={folder}")
    tree = read_tree(folder / TRAINING_STATE_FILE)
    missing = [name for name in ("model", "optimizer", "components", "micro_step") if name not in tree]
    missing += [f"components/{name}" for name in components if name not in tree.get("components", {})]
    if missing:
        raise CheckpointError(f"{TRAINING_STATE_FILE} is incomplete (no {', '.join(missing)})")
    if (tree.get("scaler") is None) != (scaler is None):
        raise CheckpointError("fp16 loss scaling differs between the checkpoint and this run "
                              "(train.mixed_precision)")
    try:
        model.load_state_dict(tree["model"])
        optimizer.load_state_dict(tree["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        text = str(err).strip().splitlines()
        raise CheckpointError(f"{TRAINING_STATE_FILE} does not fit this model or optimizer "
                              f"({text[0] if text else type(err).__name__})") from None
    if scaler is not None:
        scaler.load_state_dict(tree["scaler"])
    for name, component in components.items():
        component.load_state_dict(tree["components"][name])
    return int(tree["micro_step"])


# -- random generators (every rank) --------------------------------------------------------------------------

def save_rng_state(folder: Path, rank: int) -> None:
    tree: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tree["cuda"] = torch.cuda.get_rng_state_all()
    write_tree(folder / RNG_STATE_PATTERN.format(rank=rank), tree)


def load_rng_state(folder: Path, rank: int) -> None:
    """This rank's generators as they were when the checkpoint was written. Missing or damaged: refused
    (a resume with freshly seeded generators would not repeat the run)."""
    tree = read_tree(folder / RNG_STATE_PATTERN.format(rank=rank))
    try:
        python_state = tree["python"]
        version, internal, gauss = python_state
        python_state = (int(version), tuple(int(x) for x in internal), gauss)
        name, keys, pos, has_gauss, cached = tree["numpy"]
        numpy_state = (str(name), np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached))
        torch_state = tree["torch"]
        if not (isinstance(torch_state, torch.Tensor) and torch_state.dtype == torch.uint8):
            raise ValueError("torch state is not a byte tensor")
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)
        if "cuda" in tree and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(tree["cuda"])
    except (KeyError, ValueError, TypeError, RuntimeError) as err:
        text = str(err).strip().splitlines()
        raise CheckpointError(f"{RNG_STATE_PATTERN.format(rank=rank)} is damaged "
                              f"({type(err).__name__}: {text[0] if text else ''}); the generators cannot be "
                              "restored exactly") from None
