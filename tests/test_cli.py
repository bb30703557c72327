"""The argparse types every command shares (cli.py): each turns text into a value or one reason."""

from __future__ import annotations

import argparse
from fractions import Fraction

import pytest

from vsrpp_dist.cli import byte_size, frame_rate, frame_size, gigabytes, int_at_least, names_from


def test_frame_rates_are_exact_fractions():
    assert frame_rate("25") == 25 and frame_rate("30000/1001") == Fraction(30000, 1001)
    assert frame_rate("29.97") == Fraction(2997, 100)
    for text, reason in (("fast", "not a frame rate"), ("1/0", "not a frame rate"), ("0", "must be positive")):
        with pytest.raises(argparse.ArgumentTypeError, match=reason):
            frame_rate(text)


def test_frame_sizes_are_width_by_height_and_come_back_as_height_width():
    assert frame_size()("320x180") == (180, 320) and frame_size(8)("64X48") == (48, 64)
    for text, reason in (("320", "give WxH"), ("axb", "give WxH"), ("4x48", "at least 8")):
        with pytest.raises(argparse.ArgumentTypeError, match=reason):
            frame_size(8)(text)


def test_names_from_a_list_keep_the_order_once_each():
    codecs = names_from(("webp", "png", "raw"))
    assert codecs("raw, webp,raw") == ["raw", "webp"]
    with pytest.raises(argparse.ArgumentTypeError, match="'jpeg' is not one of webp, png, raw"):
        codecs("png,jpeg")
    with pytest.raises(argparse.ArgumentTypeError, match="give one or more of"):
        codecs(" , ")


def test_numbers_and_sizes():
    assert int_at_least(1)("3") == 3 and gigabytes("1.5") == 1.5 and byte_size("2k") == 2048
    for parse, text in ((int_at_least(1), "0"), (gigabytes, "-1"), (byte_size, "lots")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)
