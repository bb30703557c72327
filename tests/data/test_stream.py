"""The training stream: disjoint per rank and worker, reproducible, resumable at any batch, endless."""

from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import pytest
import torch

from vsrpp_dist.config import load_config
from vsrpp_dist.data import shard_format as fmt
from vsrpp_dist.data.degradation import BicubicDegradation
from vsrpp_dist.data.stream import (
    ClipStream,
    ClipTimings,
    DataStreamError,
    EpochPlan,
    ShardReader,
    TrainingShards,
    build_train_loader,
    byte_bounded_shuffle,
)
from vsrpp_dist.errors import ShardFormatError
from vsrpp_dist.files import file_sha256

from ..helpers import TINY


def data_cfg(*overrides):
    return load_config(TINY, list(overrides)).data


def stream_keys(shards, *, world_size, workers, epoch=0, seed=0):
    """Raw sample keys each (rank, worker) stream reads in one epoch."""
    out = {}
    for rank in range(world_size):
        opened = TrainingShards(shards, data_cfg(f"data.num_workers={workers}"), world_size=world_size)
        ds = ClipStream(opened, seed=seed, rank=rank, batch_size=1, degradation=BicubicDegradation())
        for worker in range(max(1, workers)):
            stream = rank * max(1, workers) + worker
            reader = ShardReader(opened.location, opened.manifest["shards"], True, "test")
            out[(rank, worker)] = [s["__key__"] for s in ds._epoch_samples(epoch, stream, reader)]
    return out


def all_keys(shards):
    manifest = fmt.read_manifest(shards)
    return manifest["totals"]["samples"]


@pytest.mark.parametrize("world_size, workers", [(1, 0), (2, 0), (2, 2), (3, 1)])
def test_streams_are_disjoint_and_cover_an_epoch(train_shards, world_size, workers):
    keys = stream_keys(train_shards, world_size=world_size, workers=workers)
    flat = [k for ks in keys.values() for k in ks]
    assert len(flat) == len(set(flat)), "a sample went to two streams in one epoch"
    assert len(flat) == all_keys(train_shards)
    assert all(keys.values()), "every stream gets data"


def test_epoch_plan_splits_shards_when_there_are_fewer_than_streams():
    plan = EpochPlan([5, 3], seed=0, num_streams=4)
    assert plan.modulus == 2
    units = [u for s in range(4) for u in plan.units(0, s)]
    assert sorted(units) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert sum(plan.epoch_samples(0, s) for s in range(4)) == 8
    assert plan.units(0, 0) != plan.units(1, 0) or plan.units(0, 1) != plan.units(1, 1), "epochs reshuffle"


def first_batches(shards, n, *, seed=0, rank=0, world_size=1, workers=0, start_batch=0):
    cfg = data_cfg(f"data.num_workers={workers}")
    loader = build_train_loader(shards, cfg, seed=seed, rank=rank, world_size=world_size, batch_size=2,
                                start_batch=start_batch)
    return [b["gt"] for b in itertools.islice(loader, n)]


def test_same_seed_same_batches_other_seed_other_batches(train_shards):
    a = first_batches(train_shards, 6)
    b = first_batches(train_shards, 6)
    c = first_batches(train_shards, 6, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    assert a[0].shape == (2, 5, 3, 48, 48) and a[0].dtype == torch.uint8


def test_a_stream_given_clip_timings_adds_its_clip_and_decode_seconds_and_yields_the_same_batches(train_shards):
    """`bench loader`'s breakdown of a clip's time: the recorder is passed in, the stream is the same."""
    timings = ClipTimings()
    loader = build_train_loader(train_shards, data_cfg(), seed=0, rank=0, world_size=1, batch_size=2,
                                clip_timings=timings)
    timed = [b["gt"] for b in itertools.islice(loader, 3)]
    assert 0 < timings.decode_s < timings.make_clip_s
    after_three = timings.make_clip_s
    next(iter(loader))
    assert timings.make_clip_s > after_three  # every clip adds
    assert all(torch.equal(x, y) for x, y in zip(timed, first_batches(train_shards, 3)))


@pytest.mark.parametrize("workers, start", [(0, 5), (2, 3), (2, 4), (3, 7)])
def test_resuming_at_batch_k_continues_the_same_stream(train_shards, workers, start):
    """Past an epoch boundary too: 16 samples / 2 per batch = 8 batches per epoch with one worker."""
    whole = first_batches(train_shards, start + 6, workers=workers)
    resumed = first_batches(train_shards, 6, workers=workers, start_batch=start)
    for i, (x, y) in enumerate(zip(whole[start:], resumed)):
        assert torch.equal(x, y), f"batch {start + i} differs after resuming at {start}"


def test_ranks_get_different_data_and_any_number_of_batches(train_shards):
    r0 = first_batches(train_shards, 40, rank=0, world_size=2)
    r1 = first_batches(train_shards, 40, rank=1, world_size=2)
    assert len(r0) == len(r1) == 40  # endless: every rank yields as many batches as it is asked for
    assert not torch.equal(r0[0], r1[0])


def test_shuffle_buffer_is_bounded_in_bytes():
    samples = [{"__key__": str(i), "x": bytes(100)} for i in range(50)]
    held_max = 0

    def watch():
        nonlocal held_max
        for i, s in enumerate(samples):
            yield s
            held_max = max(held_max, i + 1 - emitted[0])

    emitted = [0]
    out = []
    for s in byte_bounded_shuffle(watch(), 350, np.random.default_rng(0)):
        emitted[0] += 1
        out.append(s["__key__"])
    assert sorted(out, key=int) == [str(i) for i in range(50)]
    assert out != [str(i) for i in range(50)]
    assert held_max <= 4  # 350 bytes hold three 100-byte samples, plus the one just read


def test_patch_larger_than_tiles_is_refused(train_shards):
    with pytest.raises(DataStreamError, match="data.lr_patch_size=32 needs GT tiles of at least 96 px"):
        TrainingShards(train_shards, data_cfg("data.lr_patch_size=32"), world_size=1)


def test_too_many_streams_for_the_samples_is_refused(train_shards):
    with pytest.raises(DataStreamError, match="cannot feed"):
        TrainingShards(train_shards, data_cfg("data.num_workers=8"), world_size=4)


def test_a_validation_split_is_not_a_training_stream(val_shards):
    with pytest.raises(ShardFormatError, match="packed without --val"):
        TrainingShards(val_shards, data_cfg(), world_size=1)


@pytest.fixture
def shards_copy(train_shards, tmp_path):
    dest = tmp_path / "shards"
    shutil.copytree(train_shards, dest)
    return dest


def test_corrupt_frame_is_skipped_and_counted(shards_copy):
    manifest = json.loads((shards_copy / "manifest.json").read_text())
    first = shards_copy / manifest["shards"][0]["file"]
    first.write_bytes(first.read_bytes().replace(b"RIFF", b"RIFX"))  # every WebP frame of one shard
    manifest["shards"][0]["sha256"] = file_sha256(first)  # a damaged frame, not a damaged shard
    (shards_copy / "manifest.json").write_text(json.dumps(manifest))
    loader = build_train_loader(shards_copy, data_cfg(), seed=0, rank=0, world_size=1, batch_size=2)
    with pytest.warns(RuntimeWarning, match="corrupt sample"):
        batches = list(itertools.islice(loader, 12))
    assert sum(b["skipped"][0] for b in batches) >= 1
    assert all(b["gt"].shape[0] == 2 for b in batches)


def test_checksum_mismatch_and_missing_shard_are_skipped_with_a_warning(shards_copy):
    manifest = json.loads((shards_copy / "manifest.json").read_text())
    manifest["shards"][0]["sha256"] = "0" * 64
    (shards_copy / manifest["shards"][1]["file"]).unlink()
    (shards_copy / "manifest.json").write_text(json.dumps(manifest))
    loader = build_train_loader(shards_copy, data_cfg(), seed=0, rank=0, world_size=1, batch_size=2)
    with pytest.warns(RuntimeWarning) as caught:
        batches = list(itertools.islice(loader, 12))
    messages = " ".join(str(w.message) for w in caught)
    assert "does not match its checksum" in messages and "is missing" in messages
    assert sum(b["skipped"][1] for b in batches) >= 2


def test_nothing_usable_left_is_an_error_not_a_hang(shards_copy):
    manifest = json.loads((shards_copy / "manifest.json").read_text())
    for entry in manifest["shards"]:
        entry["sha256"] = "f" * 64
    (shards_copy / "manifest.json").write_text(json.dumps(manifest))
    loader = build_train_loader(shards_copy, data_cfg(), seed=0, rank=0, world_size=1, batch_size=2)
    with pytest.warns(RuntimeWarning), pytest.raises(DataStreamError, match="no usable sample"):
        next(iter(loader))


def test_truncated_shard_is_cut_short_with_a_warning(shards_copy):
    manifest = json.loads((shards_copy / "manifest.json").read_text())
    path = shards_copy / manifest["shards"][0]["file"]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2 + 100])
    loader = build_train_loader(shards_copy, data_cfg("data.verify_checksums=false"), seed=0, rank=0,
                                world_size=1, batch_size=2)
    with pytest.warns(RuntimeWarning, match="unreadable|corrupt"):
        batches = list(itertools.islice(loader, 12))
    assert len(batches) == 12
