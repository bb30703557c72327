"""`vsrpp COMMAND ...`: every command of the package under one name, for an installed package that has
no repository path (pyproject.toml's [project.scripts]).

    vsrpp pack SRC OUT            python -m vsrpp_dist.pack
    vsrpp train --config C ...    python vsrpp_dist/train.py (one process; several: accelerate launch -m vsrpp_dist.train)
    vsrpp upscale ...             python -m vsrpp_dist.upscale
    vsrpp evaluate ...            python -m vsrpp_dist.evaluate
    vsrpp export ...              python -m vsrpp_dist.export
    vsrpp bench loader|step|quality ...
    vsrpp demo                    python -m vsrpp_dist.demo
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "pack": ("vsrpp_dist.data.pack_command", "pack frame folders or videos into training shards"),
    "train": ("vsrpp_dist.train", "train the model (one process; several: accelerate launch -m vsrpp_dist.train)"),
    "upscale": ("vsrpp_dist.inference.upscale", "upscale a video or frame folder x3"),
    "evaluate": ("vsrpp_dist.inference.evaluate", "PSNR/SSIM of a model against bicubic"),
    "export": ("vsrpp_dist.inference.export", "export a model to ONNX, verified against PyTorch"),
    "bench": ("vsrpp_dist.tools.bench", "benchmarks that print figures"),
    "demo": ("vsrpp_dist.tools.demo", "the quickstart: demo footage, shards, a short training run"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    return "usage: vsrpp COMMAND [ARGS ...]\n\ncommands:\n" + "\n".join(
        f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()) + "\n\n`vsrpp COMMAND --help` for each."


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"vsrpp: error: unknown command {name!r} (one of {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    return importlib.import_module(COMMANDS[name][0]).cli(rest)


if __name__ == "__main__":
    sys.exit(main())
