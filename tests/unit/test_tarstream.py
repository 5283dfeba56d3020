"""shared/storage/tarstream.py: headers read straight from the stream, anything unclear
refused."""

from __future__ import annotations

import io
import tarfile

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from shared.storage.tarstream import (
    BLOCK_BYTES,
    Kind,
    TarFormatError,
    TarReader,
    number,
    pax_records,
)


def tar_of(*members: tuple[tarfile.TarInfo, bytes | None], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def info(name: str, kind: bytes = tarfile.REGTYPE, **attrs: object) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type = kind
    for key, value in attrs.items():
        setattr(member, key, value)
    return member


def read_all(raw: bytes, chunk: int = 1 << 20) -> list[tuple[str, Kind, bytes]]:
    """Every member with its contents, the stream handed over ``chunk`` bytes a read."""
    stream = io.BytesIO(raw)
    reader = TarReader(lambda n: stream.read(min(n, chunk)))
    return [(m.name, m.kind, b"".join(reader.data())) for m in reader]


@pytest.mark.parametrize("chunk", [1, 7, 512, 1 << 20])
def test_members_and_contents_survive_any_read_size(chunk: int) -> None:
    raw = tar_of(
        (info("dir/", tarfile.DIRTYPE), None),
        (info("dir/a.txt"), b"alpha" * 300),
        (info("x" * 150), b"pax name"),
        (info("link", tarfile.SYMTYPE, linkname="dir/a.txt"), None),
        (info("empty"), b""),
    )

    assert read_all(raw, chunk) == [
        ("dir", Kind.DIRECTORY, b""),
        ("dir/a.txt", Kind.FILE, b"alpha" * 300),
        ("x" * 150, Kind.FILE, b"pax name"),
        ("link", Kind.SYMLINK, b""),
        ("empty", Kind.FILE, b""),
    ]


def test_contents_not_taken_are_skipped() -> None:
    raw = tar_of((info("a"), b"1" * 2000), (info("b"), b"2"))
    reader = TarReader(io.BytesIO(raw).read)

    assert [m.name for m in reader] == ["a", "b"]


def test_raw_contents_include_the_padding() -> None:
    raw = tar_of((info("a"), b"abc"))
    reader = TarReader(io.BytesIO(raw).read)
    member = next(reader)

    assert b"".join(reader.raw()) == b"abc" + bytes(BLOCK_BYTES - 3)
    assert member.header == raw[: len(member.header)]


def test_a_bad_checksum_is_refused() -> None:
    raw = bytearray(tar_of((info("a"), b"x")))
    raw[0] ^= 0x01  # the name changes, the checksum no longer matches

    with pytest.raises(TarFormatError, match="checksum"):
        read_all(bytes(raw))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (tar_of((info("a"), b"x"))[:600], "ends in the middle of a member"),
        (tar_of((info("a"), b"x"))[:100], "ends in the middle of a header"),
        (tar_of((info("a"), b"x"))[:1024], "ends in the middle of a header"),
        (bytes(BLOCK_BYTES) + b"\x01" * BLOCK_BYTES, "lone zero block"),
    ],
    ids=["in_contents", "in_header", "no_end_marker", "lone_zero_block"],
)
def test_a_stream_that_breaks_off_is_refused(raw: bytes, message: str) -> None:
    with pytest.raises(TarFormatError, match=message):
        read_all(raw)


def test_gnu_long_names_are_refused() -> None:
    raw = tar_of((info("n" * 150), b"x"), fmt=tarfile.GNU_FORMAT)

    with pytest.raises(TarFormatError, match="unsupported tar member type"):
        read_all(raw)


def test_sparse_files_are_refused() -> None:
    member = info("sparse")
    member.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0"}

    with pytest.raises(TarFormatError, match="sparse"):
        read_all(tar_of((member, b"x")))


def test_base256_numbers_are_read_and_negative_ones_refused() -> None:
    assert number(b"\x80" + (10**12).to_bytes(11, "big")) == 10**12
    assert number(b"0000644\x00") == 0o644
    with pytest.raises(TarFormatError, match="negative"):
        number(b"\xff" * 12)
    with pytest.raises(TarFormatError, match="bad number"):
        number(b"12z\x00")


@pytest.mark.parametrize("data", [b"5 a=b", b"x path=a\n", b"99 path=a\n", b"9 patha\n", b"3 a\n"])
def test_malformed_pax_records_are_refused(data: bytes) -> None:
    with pytest.raises(TarFormatError, match="malformed pax"):
        pax_records(data)


def test_pax_records_are_parsed() -> None:
    assert pax_records(b"11 path=ab\n15 mtime=1.5e9\n") == {"path": b"ab", "mtime": b"1.5e9"}


NAME_PART = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\x00"),
    min_size=1,
    max_size=60,
)


@hsettings(max_examples=60, deadline=None, database=None)
@given(
    st.lists(
        st.tuples(st.lists(NAME_PART, min_size=1, max_size=4), st.binary(max_size=3000)),
        max_size=8,
    ),
    st.sampled_from([1, 511, 4096, 1 << 20]),
)
def test_the_reader_agrees_with_tarfile(members: list[tuple[list[str], bytes]], chunk: int) -> None:
    raw = tar_of(*((info("/".join(parts)), data) for parts, data in members))
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        expected = [(m.name, Kind.FILE, tar.extractfile(m).read()) for m in tar]  # type: ignore[union-attr]

    assert read_all(raw, chunk) == expected
