"""Secrets never leave the process in a location: the one masking function every writer and printer calls.

A data location can carry credentials in many forms, above all a `pipe:` command (`curl -u user:pass`,
`-H 'Authorization: Bearer ...'`, `--password x`, `TOKEN=... aws s3 cp ...`) and URLs (`user:pass@`,
presigned query strings, fragments). Locations are written into RUN/config.yaml, training.log, every
checkpoint's meta.json and error lines; `mask` is applied at each of those places (and to an experiment
tracker's run parameters), so what is on disk or on a screen never holds the secret. A reference to a
shell variable (`$TOKEN`, `${TOKEN}`) is not a secret and stays readable: that is where secrets belong
(README, "Shards in object storage or behind HTTP").

Masking is idempotent (masking masked text changes nothing) and errs on the side of hiding: a value
that only looks like a secret is hidden too.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"

# names that announce a secret: AWS_SECRET_ACCESS_KEY, api_key, X-Auth-Token, --password, sig, ...
_SECRET_WORD = r"(?:secret|token|password|passwd|pwd|key|credential|signature|auth|session|cookie|bearer)"
_SECRET_NAME = rf"[A-Za-z0-9_.-]*{_SECRET_WORD}[A-Za-z0-9_.-]*"
# a value that is a shell variable reference, expanded when the command runs: kept as written
_VARIABLE = re.compile(r"^[\"']?\$(?:\{\w+\}|\w+)[\"']?$")

_PATTERNS: list[tuple[re.Pattern, str]] = [
    # user-info in a URL: https://user:pass@host, s3://key:secret@bucket (and a bare token@host)
    (re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s'\"]+@"), r"\1" + MASK + "@"),
    # user:pass@host without a scheme (rsync, scp, ftp-style arguments)
    (re.compile(r"(?<![\w/@:.-])[^\s/@:'\"=]+:[^\s/@'\"]+@(?=[\w.-])"), MASK + "@"),
    # query values: ?X-Amz-Signature=...&token=...
    (re.compile(r"([?&][^=&\s#'\"]+=)[^&\s#'\"]+"), r"\1" + MASK),
    # a URL's fragment: https://host/x#access_token=...
    (re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s#'\"]*)#[^\s'\"]+"), r"\1#" + MASK),
]

# header lines: Authorization, Proxy-Authorization, Cookie, and any header whose name sounds secret
_HEADER_NAME = rf"(?:proxy-authorization|authorization|cookie|set-cookie|[A-Za-z0-9-]*{_SECRET_WORD}[A-Za-z0-9-]*)"
# in quotes ('Authorization: Bearer x y'): up to the closing quote
_QUOTED_HEADER = re.compile(rf"(['\"]\s*{_HEADER_NAME}\s*:\s*)([^'\"\n]+)", re.IGNORECASE)
# the authentication schemes a header value may start with (kept: only what follows is the secret)
_AUTH_SCHEMES = ("Bearer", "Basic", "Token", "Digest", "Negotiate")
# unquoted (Authorization:Bearer\ x): the scheme word, if any, and the credential
_BARE_HEADER = re.compile(rf"(\b{_HEADER_NAME}\s*:\s*)((?:(?:{'|'.join(_AUTH_SCHEMES)})\\?\s+)?[^\s'\"]+)",
                          re.IGNORECASE)
# NAME=value, --password=value: the value
_ASSIGNMENT = re.compile(rf"(\b{_SECRET_NAME}=)([^\s'\"&]+|'[^']*'|\"[^\"]*\")", re.IGNORECASE)
# command-line options that take a credential as their next word: curl -u/--user, --password x,
# --token x, --api-key x, wget --http-password x; also glued: -uuser:pass
_OPTION = re.compile(rf"((?:^|\s)(?:-u|--user|--proxy-user|-{{1,2}}{_SECRET_NAME})(?:\s+|=))([^\s'\"]+|'[^']*'|\"[^\"]*\")",
                     re.IGNORECASE)
_GLUED_USER = re.compile(r"((?:^|\s)-u)([^\s'\"]+:[^\s'\"]+)")


def _keep_variables(match: re.Match) -> str:
    head, value = match.group(1), match.group(2)
    if _VARIABLE.match(value.strip()) or value.strip(" '\"") == MASK:
        return head + value
    return head + MASK


def _header(match: re.Match) -> str:
    head, value = match.group(1), match.group(2)
    words = value.split()
    if words and all(_VARIABLE.match(w) or w == MASK or w.rstrip("\\") in _AUTH_SCHEMES for w in words):
        return head + value  # "Bearer $TOKEN": expanded by the shell, not written here
    scheme = words[0] if len(words) > 1 and words[0].rstrip("\\") in _AUTH_SCHEMES else ""
    return head + (f"{scheme} " if scheme else "") + MASK


def mask(text: str) -> str:
    """`text` with every credential a location can carry replaced by ***: URL user-info, `user:pass@`,
    query values and fragments, secret-sounding headers (Authorization, Cookie, X-Api-Key, ...),
    `NAME=value` where NAME sounds secret, and the values of credential options (`-u`, `--user`,
    `--password`, `--token`, ...). Shell variable references (`$TOKEN`) are kept."""
    if not text:
        return text
    text = _QUOTED_HEADER.sub(_header, text)
    text = _BARE_HEADER.sub(_header, text)
    text = _GLUED_USER.sub(lambda m: m.group(1) + MASK, text)
    text = _OPTION.sub(_keep_variables, text)
    text = _ASSIGNMENT.sub(_keep_variables, text)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def mask_tree(value: Any) -> Any:
    """A config tree (dicts, lists, scalars) with every string masked: what RUN/config.yaml, checkpoint
    metadata and tracker parameters hold."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {k: mask_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(mask_tree(v) for v in value)
    return value
