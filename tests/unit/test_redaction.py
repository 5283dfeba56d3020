"""shared/core/redaction.py's SecretRedactor and deployer/build.py's output pump: no
secret value, nor a common encoding of one, reaches a job's log, however the
build's output is cut into chunks."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from urllib.parse import quote

import fakeredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deployer.build import MAX_PARTIAL_LINE, _pump
from shared.core.redaction import MIN_SECRET_CHARS, SecretRedactor
from shared.engine.logs import LogWriter, read_log
from shared.redis.keys import Keys

pytestmark = pytest.mark.anyio

SECRET = "s3cr3t-Value_42"
JOB = "0123456789abcdef0123"


def test_a_value_and_its_encodings_become_stars() -> None:
    r = SecretRedactor([SECRET])
    raw = SECRET.encode()
    for form in (
        raw,
        base64.b64encode(raw),
        base64.urlsafe_b64encode(raw),
        base64.b64encode(raw).rstrip(b"="),
        quote(SECRET, safe="").encode(),
    ):
        assert r.redact(b"token=" + form + b";") == b"token=***;", form


def test_echo_piped_to_base64_is_caught_up_to_its_last_group() -> None:
    r = SecretRedactor([SECRET])
    encoded = base64.b64encode(SECRET.encode() + b"\n")
    out = r.redact(encoded)
    assert out.startswith(b"***")
    assert len(out) <= 3 + 4  # at most the final group of four survives


def test_short_values_are_left_alone() -> None:
    r = SecretRedactor(["abc", "1", ""])
    assert not r
    assert r.redact(b"abc 1 abc") == b"abc 1 abc"
    assert len("x" * MIN_SECRET_CHARS) == MIN_SECRET_CHARS
    assert SecretRedactor(["x" * MIN_SECRET_CHARS]).redact(b"<xxxx>") == b"<***>"


def test_the_longer_of_two_overlapping_secrets_is_hidden_whole() -> None:
    r = SecretRedactor(["abcd", "abcdefgh"])
    assert r.redact(b"abcdefgh abcd") == b"*** ***"


def test_each_line_of_a_multi_line_secret_is_hidden() -> None:
    pem = "-----BEGIN KEY-----\nMIIBOgIBAAJBAKj34\n-----END KEY-----\n"
    r = SecretRedactor([pem])
    assert r.redact(b"MIIBOgIBAAJBAKj34") == b"***"
    assert b"MIIB" not in r.redact(b"key: MIIBOgIBAAJBAKj34 end")


def test_regex_characters_in_a_value_match_literally() -> None:
    r = SecretRedactor(["a.b*c+d?"])
    assert r.redact(b"a.b*c+d? aXbbbcd") == b"*** aXbbbcd"


def test_split_keeps_back_where_a_value_may_begin() -> None:
    r = SecretRedactor([SECRET])
    now, kept = r.split(b"x" * 100 + SECRET[:5].encode())
    assert SECRET[:5].encode() in kept
    assert len(kept) == r.overlap
    assert now + kept == b"x" * 100 + SECRET[:5].encode()


class Chunks:
    """A byte stream that yields the given chunks (what a pipe read returns)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._gen()

    async def _gen(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


async def pumped(chunks: list[bytes], secrets: list[str], max_bytes: int = 1 << 20) -> str:
    redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    keys = Keys("t")
    log = LogWriter(redis, keys, JOB, max_bytes=max_bytes, max_entries=100_000)
    await _pump(Chunks(chunks), log, bytearray(), SecretRedactor(secrets))  # type: ignore[arg-type]
    await log.close()
    entries = await read_log(redis, keys, JOB, count=1_000_000)
    await redis.aclose()
    return "\n".join(e.text for e in entries)


async def test_a_value_cut_across_every_chunk_boundary_never_reaches_the_log() -> None:
    output = f"start {SECRET} middle {SECRET}\nend {SECRET}".encode()
    for cut in range(1, len(output)):
        text = await pumped([output[:cut], output[cut:]], [SECRET])
        assert SECRET not in text, cut
        assert text.count("***") == 3, (cut, text)


async def test_a_value_in_a_line_too_long_to_wait_for_is_hidden() -> None:
    # No newline for longer than MAX_PARTIAL_LINE: the pump cuts the line itself.
    filler = b"y" * (MAX_PARTIAL_LINE - 3)
    output = filler + SECRET.encode() + b"z" * 50
    for cut in range(len(filler) - 2, len(filler) + len(SECRET) + 2):
        text = await pumped([output[:cut], output[cut:]], [SECRET])
        assert SECRET not in text.replace("\n", ""), cut
        assert SECRET[:6] not in text.replace("\n", "")


async def test_once_the_log_is_full_the_kept_tail_is_redacted_too() -> None:
    lines = [f"line {i} {SECRET}".encode() for i in range(5000)]
    text = await pumped([b"\n".join(lines) + b"\n"], [SECRET], max_bytes=4096)
    assert "omitted" in text  # the tail path ran
    assert SECRET not in text
    assert text.rstrip().endswith("line 4999 ***")


@settings(max_examples=60, deadline=None)
@given(
    prefix=st.binary(max_size=40).filter(lambda b: b"\n" not in b),
    cuts=st.lists(st.integers(min_value=1, max_value=80), max_size=6),
)
async def test_any_chunking_keeps_the_value_out(prefix: bytes, cuts: list[int]) -> None:
    output = prefix + SECRET.encode() + prefix + b"\n" + SECRET.encode()
    chunks, rest = [], output
    for cut in cuts:
        chunks.append(rest[:cut])
        rest = rest[cut:]
    chunks.append(rest)
    text = await pumped([c for c in chunks if c], [SECRET])
    assert SECRET not in text
