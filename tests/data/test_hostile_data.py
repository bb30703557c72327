"""Damaged and hostile shards: nothing reaches a decoder unchecked, nothing allocates what a header
claims, and a manifest is checked field by field. A damaged frame is a skipped, counted sample (training),
a skipped sequence (validation, evaluate); a member declaring a gigabyte is a skipped shard."""

from __future__ import annotations

import io
import itertools
import json
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from vsrpp_dist.config import load_config
from vsrpp_dist.data import shard_format as fmt
from vsrpp_dist.data.stream import build_train_loader
from vsrpp_dist.data.validation_set import ValidationSet
from vsrpp_dist.errors import ShardFormatError
from vsrpp_dist.inference import evaluate
from vsrpp_dist.weights import WEIGHTS_FILE

from ..helpers import (ROOT, TINY, copy_shards, make_config, pack_training_shards, read_scalars, run, save_weights,
                       train, write_validation_frames)


@pytest.fixture(scope="module")
def png_train(demo_frames, tmp_path_factory) -> Path:
    """The shared training shards, their frames stored as PNG (the codec whose decoder the checks guard)."""
    return pack_training_shards(demo_frames, tmp_path_factory.mktemp("png") / "train", "--codec", "png")


@pytest.fixture(scope="module")
def png_val(tmp_path_factory) -> Path:
    from vsrpp_dist.data.pack_command import main as pack

    frames = write_validation_frames(tmp_path_factory.mktemp("png_val_frames"))
    out = tmp_path_factory.mktemp("png") / "val"
    assert pack(["--val", str(frames), str(out), "--codec", "png"]) == 0
    return out


def flip_one_byte(data: bytes) -> bytes:
    """One flipped byte in the middle of the image data: the damage that made libpng segfault."""
    damaged = bytearray(data)
    damaged[len(data) // 2] ^= 0xFF
    return bytes(damaged)


def cut_idat(data: bytes) -> bytes:
    return data[: len(data) * 2 // 3]


def png_with_valid_crcs(data: bytes, change) -> bytes:
    """`change` applied to the PNG's inflated image data, deflated again with correct CRCs: damage no
    checksum sees, made on purpose (a filter byte out of range), which the decoder must report."""
    width, height = struct.unpack(">II", data[16:24])
    pos, idat = 8, b""
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        if data[pos + 4:pos + 8] == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    raw = change(bytearray(zlib.decompress(idat)), width * 3 + 1)
    body = zlib.compress(bytes(raw))

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    return data[:33] + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def webp_bomb(width: int = 16383, height: int = 16383) -> bytes:
    """A 38-byte lossless WebP whose header declares width x height."""
    bits = (width - 1) | (height - 1) << 14 | 1 << 28  # alpha hint, version 0
    payload = b"\x2f" + bits.to_bytes(4, "little") + b"\x00" * 13
    chunk = b"VP8L" + len(payload).to_bytes(4, "little") + payload
    return b"RIFF" + (4 + len(chunk)).to_bytes(4, "little") + b"WEBP" + chunk


def a_frame(hw=(40, 48), codec="png") -> bytes:
    rng = np.random.default_rng(0)
    return fmt.encode_frame((rng.random((*hw, 3)) * 255).astype(np.uint8), codec)


# -- the frame checks themselves -----------------------------------------------------------------------


def test_damaged_pngs_are_refused_before_libpng_sees_them():
    good = a_frame()
    assert fmt.decode_frame(good, "png", (40, 48)).shape == (3, 40, 48)
    damaged = {
        "one flipped byte": flip_one_byte(good),
        "a cut IDAT": cut_idat(good),
        "a bad filter byte (CRCs valid)": png_with_valid_crcs(good, lambda raw, stride: raw.__setitem__(stride, 9) or raw),
    }
    for what, data in damaged.items():
        with pytest.raises(ShardFormatError):
            fmt.decode_frame(data, "png", (40, 48))
        assert what


def test_random_damage_never_kills_the_process(tmp_path):
    """Thousands of damaged PNGs (CRCs recomputed, so the deeper checks are what stands between them
    and libpng) in a child process: it must end normally, whatever each decode says."""
    script = tmp_path / "fuzz.py"
    script.write_text("""
import random, struct, zlib, numpy as np
from vsrpp_dist.data import shard_format as fmt
good = fmt.encode_frame((np.random.default_rng(0).random((40, 48, 3)) * 255).astype(np.uint8), "png")
def fix(d):
    pos = 8
    while pos + 12 <= len(d):
        n = int.from_bytes(d[pos:pos + 4], "big"); end = pos + 12 + n
        if end > len(d): break
        d[end - 4:end] = zlib.crc32(bytes(d[pos + 4:end - 4])).to_bytes(4, "big"); pos = end
    return d
random.seed(1)
for _ in range(1500):
    d = bytearray(good)
    for _ in range(random.randint(1, 3)):
        d[random.randrange(33, len(d) - 12)] ^= random.randrange(1, 256)
    try:
        fmt.decode_frame(bytes(fix(d)), "png", (40, 48))
    except fmt.ShardFormatError:
        pass
print("survived")
""")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0 and "survived" in done.stdout, (done.returncode, done.stderr[-2000:])


def test_a_frame_declaring_more_pixels_than_the_manifest_is_never_decoded():
    bomb = webp_bomb()
    assert len(bomb) == 38 and fmt.frame_header_size(bomb, "webp") == (16383, 16383)
    started = time.perf_counter()
    with pytest.raises(ShardFormatError, match="declares 16383x16383"):
        fmt.decode_frame(bomb, "webp", (48, 48))
    assert time.perf_counter() - started < 1.0
    for codec in ("png", "webp", "raw"):
        with pytest.raises(ShardFormatError, match="declares 48x40"):
            fmt.decode_frame(a_frame((40, 48), codec), codec, (40, 40))
        assert fmt.frame_header_size(a_frame((40, 48), codec), codec) == (40, 48)


# -- training shards ---------------------------------------------------------------------------------


def first_batches(folder, n, **cfg):
    data_cfg = load_config(TINY, [f"data.{k}={v}" for k, v in cfg.items()]).data
    loader = build_train_loader(folder, data_cfg, seed=0, rank=0, world_size=1, batch_size=2)
    return list(itertools.islice(loader, n))


@pytest.mark.parametrize("damage", [flip_one_byte, cut_idat])
def test_a_damaged_png_in_a_training_shard_is_a_skipped_counted_sample(png_train, tmp_path, damage):
    damaged = copy_shards(png_train, tmp_path / "shards", member=lambda name, data: damage(data)
                          if name == "s000000r00000t000.002.png" else data)  # frame 2: in every window of the run
    with pytest.warns(RuntimeWarning, match="corrupt sample"):
        batches = first_batches(damaged, 16, num_workers=0)
    assert sum(b["skipped"][0] for b in batches) >= 1 and all(b["gt"].shape[0] == 2 for b in batches)


def test_a_damaged_png_in_a_remote_shard_is_skipped_before_its_checksum_is_known(png_train, tmp_path):
    """Remote checksums are checked only at a shard's end, after its samples were used: the frame checks
    are what keeps a damaged member from the decoder there."""
    from vsrpp_dist.tools.loopback import http_folder

    damaged = copy_shards(png_train, tmp_path / "shards", member=lambda name, data: flip_one_byte(data)
                          if name == "s000000r00000t000.002.png" else data)
    with http_folder(damaged.parent) as (url, _), pytest.warns(RuntimeWarning, match="corrupt sample"):
        batches = first_batches(f"{url}/{damaged.name}", 16, num_workers=0)
    assert sum(b["skipped"][0] for b in batches) >= 1


def test_a_webp_bomb_in_a_training_shard_is_skipped_without_decoding_it(train_shards, tmp_path):
    damaged = copy_shards(train_shards, tmp_path / "shards",
                          member=lambda name, data: webp_bomb() if name == "s000000r00000t000.003.webp" else data)
    started = time.perf_counter()
    with pytest.warns(RuntimeWarning, match="declares 16383x16383"):
        batches = first_batches(damaged, 16, num_workers=0)
    assert time.perf_counter() - started < 20  # decoding one bomb takes ~12 s and 5 GB
    assert sum(b["skipped"][0] for b in batches) >= 1


def gigabyte_member_shard(good_shard: bytes) -> bytes:
    """The shard's samples, then a member whose header declares 1 GiB (followed by a few bytes)."""
    info = tarfile.TarInfo("s999999r00000t000.000.webp")
    info.size = 1 << 30
    return _strip_end(good_shard) + info.tobuf() + b"x" * 4096


def _strip_end(shard: bytes) -> bytes:
    """A tar without its end-of-archive blocks (members can be appended)."""
    with tarfile.open(fileobj=io.BytesIO(shard)) as tar:
        last = tar.getmembers()[-1]
        return shard[: last.offset_data + (last.size + 511) // 512 * 512]


def test_a_tar_member_declaring_a_gigabyte_is_a_skipped_shard(train_shards, tmp_path):
    dest = copy_shards(train_shards, tmp_path / "shards")
    manifest = json.loads((dest / "manifest.json").read_text())
    shard = dest / manifest["shards"][0]["file"]
    shard.write_bytes(gigabyte_member_shard(shard.read_bytes()))
    with pytest.warns(RuntimeWarning, match=r"declares 1,073,741,824 bytes"):
        batches = first_batches(dest, 16, verify_checksums="false", num_workers=0)
    assert sum(b["skipped"][1] for b in batches) >= 1


# -- validation shards and evaluate --data ----------------------------------------------------------------


def damage_first_sequence(png_val, dest):
    return copy_shards(png_val, dest, member=lambda name, data: flip_one_byte(data)
                       if name == "s000000f000003.gt.png" else data)


def test_a_damaged_validation_frame_skips_its_sequence_and_the_run_finishes(png_train, png_val, tmp_path):
    val = damage_first_sequence(png_val, tmp_path / "val")
    dataset = ValidationSet(val)
    assert [s.index for s in dataset] == [1]
    assert list(dataset.damaged) == [0] and "fails its CRC" in dataset.damaged[0]
    run_dir = tmp_path / "run"
    cfg = make_config(run_dir, png_train, val, "train.total_steps=2", "validation.every=1",
                      "checkpoint.rolling_every=0", "checkpoint.regular_every=0")
    _, code = train(cfg)
    assert code == 0
    assert set(read_scalars(run_dir, "Metrics/KI_PSNR")) == {1, 2}  # validated twice, on the good sequence
    log = (run_dir / "training.log").read_text()
    assert log.count("validation: sequence 0 skipped, it has a damaged frame") == 1  # said once, not per validation


def test_a_validation_frame_missing_its_packed_lr_skips_its_sequence(tmp_path, capsys):
    """In a set packed with real LR every sample carries it: one without is damaged, never scored on
    some other input (validation and evaluate skip the sequence; the rest is scored on its LR)."""
    from PIL import Image

    from vsrpp_dist.data.pack_command import main as pack

    write_validation_frames(tmp_path / "gt")
    for frame in sorted((tmp_path / "gt").rglob("*.png")):
        lr = tmp_path / "lr" / frame.relative_to(tmp_path / "gt")
        lr.parent.mkdir(parents=True, exist_ok=True)
        Image.open(frame).resize((16, 16), Image.BOX).save(lr)
    assert pack(["--val", str(tmp_path / "gt"), str(tmp_path / "packed"), "--lr", str(tmp_path / "lr"),
                 "--codec", "png"]) == 0
    val = copy_shards(tmp_path / "packed", tmp_path / "val",
                      member=lambda name, data: None if name == "s000000f000003.lr.png" else data)
    dataset = ValidationSet(val)
    assert [s.index for s in dataset] == [1]
    assert list(dataset.damaged) == [0] and "lr.png" in dataset.damaged[0]
    weights = save_weights(tmp_path / WEIGHTS_FILE, seed=0)
    capsys.readouterr()
    code, _, err = run(capsys, evaluate, "--checkpoint", weights, "--data", val, "--json", tmp_path / "e.json",
                       "--quiet")
    assert code == 0, err
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["skipped_damaged"] == ["000"] and report["lr"] == "real LR frames packed with the set"


def test_evaluate_skips_a_damaged_sequence_and_scores_the_rest(png_val, tmp_path, capsys):
    val = damage_first_sequence(png_val, tmp_path / "val")
    weights = save_weights(tmp_path / "w" / WEIGHTS_FILE)
    rc, out, err = run(capsys, evaluate, "--checkpoint", weights, "--data", val, "--quiet", "--json", tmp_path / "r.json")
    assert rc == 0, err
    assert "000: skipped, a frame is damaged" in err
    report = json.loads((tmp_path / "r.json").read_text())
    assert [r["sequence"] for r in report["rows"]] == ["001", "overall"] and report["skipped_damaged"] == ["000"]


# -- the manifest's structure --------------------------------------------------------------------------


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(sequences=[]), r"manifest field sequences: expected a non-empty list, got \[\]"),
    (lambda m: m["sequences"][0].update(tile_size="48x48"), r"sequences\[0\]\.tile_size: expected \[height, width\]"),
    (lambda m: m.update(shards={"a": 1}), r"manifest field shards: expected a non-empty list, got \{'a': 1\}"),
    (lambda m: m["shards"][0].update(file="/etc/passwd"), r"shards\[0\]\.file: expected a file name in the manifest's folder"),
    (lambda m: m["shards"][0].update(file="../outside.tar"), r"shards\[0\]\.file: expected a file name"),
    (lambda m: m["shards"][0].update(samples="many"), r"shards\[0\]\.samples: expected a whole number"),
    (lambda m: m["sequences"][0].update(frame_size=[0, 48]), r"sequences\[0\]\.frame_size"),
])
def test_a_malformed_manifest_is_one_line_naming_the_field(train_shards, tmp_path, edit, message):
    folder = copy_shards(train_shards, tmp_path / "shards", manifest=edit)
    with pytest.raises(ShardFormatError, match=message) as caught:
        fmt.read_manifest(folder)
    assert "\n" not in str(caught.value)


def test_a_malformed_manifest_stops_training_in_one_line_without_a_run_directory(train_shards, val_shards, tmp_path):
    folder = copy_shards(train_shards, tmp_path / "shards", manifest=lambda m: m["sequences"][0].update(tile_size="48"))
    done = subprocess.run([sys.executable, "-m", "vsrpp_dist.train", "--config", str(TINY), f"run.dir={tmp_path}/run",
                           f"data.train_shards={folder}", f"data.val_shards={val_shards}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"train: error: data.train_shards: {folder}/manifest.json: manifest field sequences[0].tile_size: expected "
        "[height, width] in pixels (1 to 65535), got '48'"]
    assert not (tmp_path / "run").exists()


def test_a_validation_set_damaged_everywhere_stops_the_run_in_one_line(png_train, png_val, tmp_path):
    val = copy_shards(png_val, tmp_path / "val", member=lambda name, data: flip_one_byte(data)
                      if name.endswith("f000002.gt.png") else data)  # frame 2 of both sequences
    done = subprocess.run([sys.executable, "-m", "vsrpp_dist.train", "--config", str(TINY), f"run.dir={tmp_path}/run",
                           f"data.train_shards={png_train}", f"data.val_shards={val}", "train.total_steps=4",
                           "validation.every=2", "checkpoint.rolling_every=0", "checkpoint.regular_every=0"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"train: error: validation: every sequence of {val} has a damaged frame; pack the validation set again, "
        "or train without it (data.val_shards='')")
    assert "Traceback" not in done.stderr
    # the two steps before the first validation are kept
    assert [c.name for c in (tmp_path / "run" / "checkpoints").iterdir()] == ["emergency-00000002"]
