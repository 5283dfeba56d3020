"""Tar streams read without tarfile's per-member overhead.

Headers (POSIX ustar with pax extensions, as ``git archive`` and tarfile write them)
are parsed straight from a buffer and contents are handed on as slices of it, so a
source of thousands of small files costs a few microseconds of Python per member.
Anything this reader does not understand (GNU long names, sparse files, a bad
checksum, a stream that ends early) is a :class:`TarFormatError`, never a guess.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from shared.core.errors import ValidationError

BLOCK_BYTES = 512
READ_BYTES = 1 << 20
MAX_PAX_BYTES = 1 << 16
END_OF_ARCHIVE = bytes(2 * BLOCK_BYTES)
ZERO_BLOCK = bytes(BLOCK_BYTES)
POSIX_MAGIC = b"ustar\x00"
GNU_MAGIC = b"ustar "
CHECKSUM_SPACES = 8 * ord(" ")

Read = Callable[[int], bytes]


class TarFormatError(ValidationError):
    """A tar stream that is truncated, has a bad header, or uses a header we refuse."""


class Kind(enum.Enum):
    """What a member is; the value is the word logs use for it."""

    FILE = "file"
    DIRECTORY = "directory"
    SYMLINK = "symlink"
    HARD_LINK = "hard link"
    SPECIAL = "special file"


KINDS = {
    b"0": Kind.FILE,
    b"\0": Kind.FILE,
    b"7": Kind.FILE,  # "contiguous file": a regular file everywhere that matters
    b"5": Kind.DIRECTORY,
    b"2": Kind.SYMLINK,
    b"1": Kind.HARD_LINK,
    b"3": Kind.SPECIAL,
    b"4": Kind.SPECIAL,
    b"6": Kind.SPECIAL,
}


@dataclass(frozen=True, slots=True)
class Member:
    """One archive member; its contents follow via :meth:`TarReader.data` or ``raw``."""

    name: str  # UTF-8 with surrogate escapes, so a bad name reaches the name check
    kind: Kind
    size: int
    mode: int
    mtime: int
    header: bytes  # the header blocks as read, pax extension included (for copying)


def padded(size: int) -> int:
    """``size`` rounded up to whole blocks."""
    return -(-size // BLOCK_BYTES) * BLOCK_BYTES


def number(field: bytes) -> int:
    """A numeric header field: octal text, or GNU base-256 for large values."""
    if field[:1] == b"\x80":
        return int.from_bytes(field[1:], "big")
    if field[:1] == b"\xff":
        raise TarFormatError("negative number in a tar header")
    text = field.split(b"\0", 1)[0].strip(b" ")
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise TarFormatError("bad number in a tar header") from None


def pax_records(data: bytes) -> dict[str, bytes]:
    """The ``<length> <key>=<value>\\n`` records of a pax extended header."""
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        length = int(data[pos:space]) if 0 < space - pos < 8 and data[pos:space].isdigit() else 0
        end = pos + length
        if length <= space - pos or end > len(data) or data[end - 1 : end] != b"\n":
            raise TarFormatError("malformed pax header")
        key, eq, value = data[space + 1 : end - 1].partition(b"=")
        if not eq:
            raise TarFormatError("malformed pax header")
        records[key.decode("utf-8", "replace")] = value
        pos = end
    if any(key.startswith("GNU.sparse") for key in records):
        raise TarFormatError("sparse files are not supported")
    return records


class TarReader:
    """Iterate a tar stream's members from ``read`` (a decompressed stream's read).

    Each member's contents must be taken (``data``/``raw``) before the next member,
    or they are skipped. Iteration stops at the end-of-archive marker; a stream that
    ends before it is a TarFormatError.
    """

    def __init__(self, read: Read) -> None:
        self._read = read
        self._buf = b""
        self._pos = 0
        self._unread = 0  # bytes of the current member's padded contents not yet taken
        self._padding = 0  # of which padding
        self.ended = False

    def __iter__(self) -> Iterator[Member]:
        return self

    def __next__(self) -> Member:
        self.skip()
        if self.ended:
            raise StopIteration
        pax: dict[str, bytes] = {}
        raw: list[bytes] = []
        while True:
            block = self._take(BLOCK_BYTES)
            if block == ZERO_BLOCK:
                if self._take(BLOCK_BYTES) != ZERO_BLOCK:
                    raise TarFormatError("a lone zero block in the middle of the archive")
                self.ended = True
                raise StopIteration
            check(block)
            typeflag = block[156:157]
            if typeflag in (b"x", b"g"):
                size = number(block[124:136])
                if size > MAX_PAX_BYTES:
                    raise TarFormatError("pax header larger than 64 KiB")
                data = self._take(padded(size))
                if typeflag == b"x":  # a global header ("g": git's commit id) is dropped
                    pax = pax_records(data[:size])
                    raw = [block, data]  # a later extension header replaces an earlier one
                continue
            return self._member(block, typeflag, pax, b"".join((*raw, block)))

    def _member(self, block: bytes, typeflag: bytes, pax: dict[str, bytes], raw: bytes) -> Member:
        kind = KINDS.get(typeflag)
        if kind is None:
            raise TarFormatError(f"unsupported tar member type {typeflag!r}")
        if "path" in pax:
            name = pax["path"]
        else:
            name = block[:100].split(b"\0", 1)[0]
            prefix = block[345:500].split(b"\0", 1)[0] if block[257:263] == POSIX_MAGIC else b""
            if prefix:
                name = prefix + b"/" + name
        text = name.decode("utf-8", "surrogateescape")
        if typeflag == b"\0" and text.endswith("/"):
            kind = Kind.DIRECTORY  # the pre-POSIX way of writing a directory
        if kind is Kind.DIRECTORY:
            text = text.rstrip("/")
        size = _pax_int(pax, "size") if "size" in pax else number(block[124:136])
        mtime = _pax_int(pax, "mtime") if "mtime" in pax else number(block[136:148])
        if kind is not Kind.FILE:  # only regular files have contents (as tarfile reads it)
            size = 0
        self._unread = padded(size)
        self._padding = self._unread - size
        return Member(text, kind, size, number(block[100:108]), mtime, raw)

    def data(self) -> Iterator[memoryview]:
        """The current member's contents, in slices."""
        yield from self._stream(self._unread - self._padding)
        self.skip()

    def raw(self) -> Iterator[memoryview]:
        """The current member's contents with their padding, as stored."""
        yield from self._stream(self._unread)

    def skip(self) -> None:
        """Pass over what is left of the current member's contents."""
        for _ in self._stream(self._unread):
            pass

    def _stream(self, n: int) -> Iterator[memoryview]:
        while n:
            if self._pos == len(self._buf):
                self._buf, self._pos = self._read(READ_BYTES), 0
                if not self._buf:
                    raise TarFormatError("the archive ends in the middle of a member")
            take = min(n, len(self._buf) - self._pos)
            view = memoryview(self._buf)[self._pos : self._pos + take]
            self._pos += take
            self._unread -= take
            n -= take
            yield view

    def _take(self, n: int) -> bytes:
        """Exactly ``n`` bytes of header (small: headers and pax records)."""
        if self._pos + n > len(self._buf):
            parts, have = [self._buf[self._pos :]], len(self._buf) - self._pos
            while have < n:
                chunk = self._read(READ_BYTES)
                if not chunk:
                    raise TarFormatError("the archive ends in the middle of a header")
                parts.append(chunk)
                have += len(chunk)
            self._buf, self._pos = b"".join(parts), 0
        start = self._pos
        self._pos += n
        return self._buf[start : self._pos]


def check(block: bytes) -> None:
    """Refuse a header block that is not ustar or whose checksum does not match."""
    if block[257:263] not in (POSIX_MAGIC, GNU_MAGIC):
        raise TarFormatError("not a ustar header")
    if sum(block) - sum(block[148:156]) + CHECKSUM_SPACES != number(block[148:156]):
        raise TarFormatError("bad header checksum")


def _pax_int(pax: dict[str, bytes], key: str) -> int:
    try:
        value = int(float(pax[key]))
    except ValueError:
        raise TarFormatError(f"bad pax {key}") from None
    if value < 0 and key == "size":
        raise TarFormatError("negative pax size")
    return value
