"""Secrets in data locations never reach a file or a screen: every form a location can carry them in is
masked by the one function (masking.mask), and a real run from a `pipe:` location full of credentials
writes none of them into config.yaml, training.log, checkpoint metadata or its error lines."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vsrpp_dist.config import load_config
from vsrpp_dist.data.locations import mask as mask_in_data_layer
from vsrpp_dist.masking import mask, mask_tree

from .helpers import ROOT, TINY, make_config, train

SECRETS = ("pw-alpha", "tok-bravo", "key-charlie", "pw-delta", "sig-echo", "frag-foxtrot", "pw-golf", "tok-hotel")


@pytest.mark.parametrize("text, masked", [
    ("pipe:curl -s -u alice:pw-alpha https://h/{name}", "pipe:curl -s -u *** https://h/{name}"),
    ("pipe:curl -ualice:pw-alpha https://h/{name}", "pipe:curl -u*** https://h/{name}"),
    ("pipe:curl --user alice:pw-alpha https://h/{name}", "pipe:curl --user *** https://h/{name}"),
    ("pipe:curl -H 'Authorization: Bearer tok-bravo' https://h/{name}",
     "pipe:curl -H 'Authorization: Bearer ***' https://h/{name}"),
    ('pipe:curl -H "X-Api-Key: key-charlie" https://h/{name}', 'pipe:curl -H "X-Api-Key: ***" https://h/{name}'),
    ('pipe:curl -H "Cookie: session=tok-bravo; theme=dark" https://h/{name}', 'pipe:curl -H "Cookie: ***" https://h/{name}'),
    ("pipe:curl https://alice:pw-delta@h/{name}", "pipe:curl https://***@h/{name}"),
    ("pipe:rsync alice:pw-delta@host:/shards/{name} /dev/stdout", "pipe:rsync ***@host:/shards/{name} /dev/stdout"),
    ("pipe:curl 'https://h/{name}?X-Amz-Signature=sig-echo&expires=1'", "pipe:curl 'https://h/{name}?X-Amz-Signature=***&expires=***'"),
    ("pipe:curl https://h/{name}#access_token=frag-foxtrot", "pipe:curl https://h/{name}#***"),
    ("pipe:wget --password pw-golf --http-password=pw-golf -O- https://h/{name}",
     "pipe:wget --password *** --http-password=*** -O- https://h/{name}"),
    ("pipe:AWS_SECRET_ACCESS_KEY=key-charlie aws s3 cp --no-sign-request s3://b/{name} -",
     "pipe:AWS_SECRET_ACCESS_KEY=*** aws s3 cp --no-sign-request s3://b/{name} -"),
])
def test_every_form_of_credential_is_masked(text, masked):
    assert mask(text) == masked
    assert mask(masked) == masked  # idempotent: masking what is written again changes nothing


@pytest.mark.parametrize("text", [
    'pipe:curl -H "Authorization: Bearer $TOKEN" https://h/{name}',  # the shell expands it: nothing secret here
    "pipe:curl -u ${USER_AND_PASSWORD} https://h/{name}",
    "pipe:aws s3 cp --no-sign-request s3://bucket/train/{name} -",
    "/data/shards/train", "s3://bucket/prefix", "git@github.com:org/repo", "step 12: 1:2 at 12:30",
])
def test_what_is_not_a_secret_stays_readable(text):
    assert mask(text) == text


def test_one_masking_function_for_every_layer():
    assert mask_in_data_layer is mask
    assert mask_tree({"a": ["x", {"b": "https://u:pw-alpha@h/p"}], "n": 3}) == {"a": ["x", {"b": "https://***@h/p"}], "n": 3}


def secret_pipe(folder) -> str:
    """A working pipe: location (cat) whose command carries credentials in every form: an assignment, and
    a shell comment the shell ignores, so the command still reads the shard."""
    return (f"pipe:API_TOKEN=tok-hotel cat {folder}/{{name}} # curl -u alice:pw-alpha -H 'Authorization: Bearer "
            "tok-bravo' -H 'X-Api-Key: key-charlie' https://bob:pw-delta@h/x?sig=sig-echo#frag-foxtrot --password pw-golf")


def test_a_run_from_a_location_with_credentials_writes_none_of_them(train_shards, val_shards, tmp_path):
    run_dir = tmp_path / "run"
    cfg = make_config(run_dir, secret_pipe(train_shards), secret_pipe(val_shards), "train.total_steps=2",
                      "validation.every=2", "checkpoint.rolling_every=1", "checkpoint.regular_every=0")
    _, code = train(cfg)
    assert code == 0
    written = [run_dir / "config.yaml", run_dir / "training.log"] + sorted(run_dir.glob("checkpoints/*/meta.json"))
    assert len(written) >= 3
    for path in written:
        text = path.read_text()
        assert "API_TOKEN=***" in text, path  # the location is there, masked
        leaked = [s for s in SECRETS if s in text]
        assert not leaked, f"{path} holds {leaked}"
    meta = json.loads(written[-1].read_text())
    assert meta["config"]["data"]["train_shards"].startswith("pipe:API_TOKEN=*** cat ")
    # the masked config.yaml still loads
    assert load_config(run_dir / "config.yaml").train.total_steps == 2


def test_an_error_line_quoting_a_location_is_masked(tmp_path):
    location = f"pipe:API_TOKEN=tok-hotel cat {tmp_path}/nothing/{{name}} # -u alice:pw-alpha"
    done = subprocess.run([sys.executable, "-m", "vsrpp_dist.train", "--config", str(TINY), f"run.dir={tmp_path}/run",
                           f"data.train_shards={location}", "data.remote_retries=0"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("train: error: data.train_shards: pipe:API_TOKEN=*** cat "), lines
    assert not [s for s in SECRETS if s in done.stderr], done.stderr
    assert not (tmp_path / "run").exists()
