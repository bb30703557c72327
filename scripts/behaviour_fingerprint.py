"""What a refactoring must not change, in one file: train and evaluate a checkout under every way the
model's input is made, and record the figures a user sees.

    python scripts/behaviour_fingerprint.py OUT.json            # in the checkout to fingerprint (~1 min, CPU)
    python scripts/behaviour_fingerprint.py --compare A.json B.json

Seven tiny runs (tiny config, 8 steps, validation every 4): bicubic and realistic input, each with 0 and 2
loader workers; shards packed with real LR; bicubic and realistic runs validated on a set packed with real
LR. Recorded per run: every loss and validation line of training.log (timings masked) and the sha256 of
the final weights' tensors. Then six evaluate runs of the bicubic run's weights (bicubic, realistic with
a seed, --lr, a packed set, a packed set with LR, a packed set degraded realistically): their JSON rows.
Two checkouts with equal fingerprints train to the same weights and score the same.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

RUNS = {  # name: (training shards, validation shards, overrides)
    "bicubic": ("train", "val", []),
    "bicubic_w2": ("train", "val", ["data.num_workers=2"]),
    "realistic": ("train", "val", ["degradation.kind=realistic"]),
    "realistic_w2": ("train", "val", ["degradation.kind=realistic", "data.num_workers=2"]),
    "packed_lr": ("train_lr", "val_lr", []),
    "bicubic_val_lr": ("train", "val_lr", []),
    "realistic_val_lr": ("train", "val_lr", ["degradation.kind=realistic"]),
}
EVALUATIONS = {
    "eval_bicubic": ["--data", "valframes"],
    "eval_realistic": ["--data", "valframes", "--degradation", "realistic", "--seed", "3"],
    "eval_lr": ["--data", "valframes", "--lr", "valframes_lr"],
    "eval_packed": ["--data", "val"],
    "eval_packed_lr": ["--data", "val_lr"],
    "eval_packed_realistic": ["--data", "val", "--degradation", "realistic"],
}
VARYING = ("seconds", "checkpoint", "sha256", "file", "path")  # JSON keys that differ between any two runs
CHECKOUT = Path(__file__).resolve().parent.parent  # the code fingerprinted: this script's checkout


def fingerprint(out: Path) -> None:
    sys.path.insert(0, str(CHECKOUT))
    from PIL import Image
    from safetensors.torch import load_file

    from vsrpp_dist.tools.demo_data import write_frame_folders

    work = Path(tempfile.mkdtemp(prefix="fingerprint-"))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(CHECKOUT))

    def run(*args: str) -> None:
        done = subprocess.run([sys.executable, "-m", *args], cwd=work, env=env, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")

    write_frame_folders(work / "frames", sequences=4, frames=14, frame_hw=(72, 96), seed=1)
    write_frame_folders(work / "valframes", sequences=2, frames=6, frame_hw=(48, 48), seed=7,
                        photos=("coffee", "chelsea"))
    for src in ("frames", "valframes"):  # real LR unlike bicubic: a box filter
        for frame in sorted((work / src).rglob("*.png")):
            lr = work / f"{src}_lr" / frame.relative_to(work / src)
            lr.parent.mkdir(parents=True, exist_ok=True)
            image = Image.open(frame)
            image.resize((image.width // 3, image.height // 3), Image.BOX).save(lr)
    training = ["--min-tile", "48", "--frames-per-sample", "7", "--shard-size", "150K", "--quiet"]
    run("vsrpp_dist.pack", "frames", "train", *training)
    run("vsrpp_dist.pack", "frames", "train_lr", "--lr", "frames_lr", *training)
    run("vsrpp_dist.pack", "--val", "valframes", "val", "--quiet")
    run("vsrpp_dist.pack", "--val", "valframes", "val_lr", "--lr", "valframes_lr", "--quiet")

    figures: dict = {}
    for name, (train, val, overrides) in RUNS.items():
        run("vsrpp_dist.train", "--config", "tiny", f"run.dir=runs/{name}", f"data.train_shards={train}",
            f"data.val_shards={val}", *overrides)
        log = (work / "runs" / name / "training.log").read_text().splitlines()
        lines = [re.sub(r"^\d{4}-\d\d-\d\d \S+ ", "", line) for line in log if re.search(r"loss|PSNR", line)]
        figures[name] = [re.sub(r"\d+(\.\d+)? ?(clips/s|s|ms|%)(?!\w)", "T", line) for line in lines]
        tensors = load_file(str(work / "runs" / name / "checkpoint_latest" / "model.safetensors"))
        digest = hashlib.sha256()
        for key in sorted(tensors):
            digest.update(key.encode())
            digest.update(tensors[key].numpy().tobytes())
        figures[f"{name}_weights"] = digest.hexdigest()
    for name, args in EVALUATIONS.items():
        run("vsrpp_dist.evaluate", "--checkpoint", "runs/bicubic/checkpoint_latest", *args, "--json",
            f"{name}.json", "--quiet")
        figures[name] = json.loads((work / f"{name}.json").read_text())
    out.write_text(json.dumps(figures, indent=1))
    print(f"wrote {out} (work in {work})")


def differences(a, b, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        found = []
        for key in sorted(set(a) | set(b)):
            if key in VARYING:
                continue
            if key not in a or key not in b:
                found.append(f"{path}/{key}: only in {'B' if key not in a else 'A'}")
            else:
                found += differences(a[key], b[key], f"{path}/{key}")
        return found
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {str(a)[:100]!r} -> {str(b)[:100]!r}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", help="write this checkout's fingerprint here")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="print what differs between two fingerprints")
    args = parser.parse_args()
    if args.compare:
        a, b = (json.loads(Path(p).read_text()) for p in args.compare)
        found = differences(a, b)
        print("\n".join(found) if found else "the same")
        return 1 if found else 0
    if not args.out:
        parser.error("give OUT.json, or --compare A B")
    fingerprint(Path(args.out).absolute())
    return 0


if __name__ == "__main__":
    sys.exit(main())
