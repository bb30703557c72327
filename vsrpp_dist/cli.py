"""What every command shares: user errors (errors.UserError, and a missing file or folder the OS names)
become one line on stderr and exit code 2, no traceback; failures that a traceback would not explain
either (errors.RunFailure: another rank gone) one line and exit code 1."""

from __future__ import annotations

import argparse
import re
import sys
from fractions import Fraction
from typing import Callable, Sequence

from .errors import RunFailure, Stopped, UserError
from .masking import mask

USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError, NotADirectoryError)


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None, *,
            prog: str = "vsrpp-dist") -> int:
    try:
        return main(argv)
    except USER_ERRORS as err:  # masked: a message may quote a location or an override with a secret
        print(f"{prog}: error: {mask(str(err))}", file=sys.stderr)
        return 2
    except RunFailure as err:
        print(f"{prog}: error: {mask(str(err))}", file=sys.stderr)
        return 1
    except Stopped as err:
        print(f"{prog}: {mask(str(err))}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (with a pointer to --help) and exit code 2, like every
    other user error, instead of the usage block plus an error line. `error_name` is the name that line
    starts with when it should differ from `prog` (train.py reports as "train", as run_cli does)."""

    def __init__(self, *args, error_name: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.error_name = error_name

    def error(self, message: str):
        self.exit(2, f"{self.error_name or self.prog}: error: {message} (see --help)\n")


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse `type` for whole numbers >= low, with a one-line reason when the text is not one."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum {low}")
        return value
    return parse


def note(message: str) -> None:
    """A remark for the user that is not an error (stderr, so stdout stays the result)."""
    print(f"note: {message}", file=sys.stderr)


def gigabytes(text: str) -> float:
    """An argparse `type` for a memory size in GiB (>= 0)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of GiB") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text}: must be 0 or more")
    return value


def byte_size(text: str) -> int:
    """An argparse `type` for a size in bytes: '1G', '500M', '64k', '1.5GiB', '1000000' -> bytes
    (K/M/G/T are powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (examples: 500M, 1G, 2000000)")
    value = float(match.group(1)) * 1024 ** " kmgt".index((match.group(2) or " ").lower())
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1 byte")
    return int(value)


def frame_rate(text: str) -> Fraction:
    """An argparse `type` for a frame rate: '25', '29.97', '30000/1001' -> an exact fraction (> 0)."""
    try:
        fps = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a frame rate (examples: 25, 29.97, 30000/1001)") from None
    if fps <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the frame rate must be positive")
    return fps.limit_denominator(1_000_000)


def frame_size(min_side: int = 1) -> Callable[[str], tuple[int, int]]:
    """An argparse `type` for a frame size given as WxH ('64x48'), both sides at least `min_side`;
    returns (H, W), the order tensors use."""
    def parse(text: str) -> tuple[int, int]:
        try:
            w, h = (int(v) for v in text.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: give WxH, e.g. 64x48") from None
        if w < min_side or h < min_side:
            raise argparse.ArgumentTypeError(f"{text!r}: both sides must be at least {min_side}")
        return h, w
    return parse


def names_from(choices: Sequence[str]) -> Callable[[str], list[str]]:
    """An argparse `type` for a comma-separated list of names from `choices` (at least one; each once, in
    the order given)."""
    def parse(text: str) -> list[str]:
        names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
        unknown = [n for n in names if n not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"{unknown[0]!r} is not one of {', '.join(choices)}")
        if not names:
            raise argparse.ArgumentTypeError(f"{text!r}: give one or more of {', '.join(choices)}, comma-separated")
        return names
    return parse

