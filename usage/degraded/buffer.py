"""Degraded mode, writing side: usage deltas appended durably to disk while the database is down.

Each gateway process appends to a file of its own, `<host>_<pid>_<started>_<seq>.open`, holding
an exclusive `flock` on it for as long as it writes there. Sealing renames it to `.buf`; only
sealed files, and open files whose writer is gone (their lock is free), are drained.

A record is one line, framed and checksummed so a torn write from a crash is recognised:

    CVD1 <payload length> <crc32 of payload, 8 hex digits> <payload: the delta as JSON>\\n

Appends are grouped: a whole batch of deltas is written with one `write` and one `fsync`, the
way the ledger groups commits.
"""

import errno
import fcntl
import json
import logging
import os
import socket
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from usage.ledger.delta import UsageDelta

logger = logging.getLogger(__name__)

MAGIC = b"CVD1"
OPEN_SUFFIX = ".open"
SEALED_SUFFIX = ".buf"
QUARANTINE = "quarantine"


def encode(delta: UsageDelta, txid: int | None = None) -> bytes:
    """`txid` marks a delta whose live write had an unknown outcome: the drainer asks
    txid_status() before replaying it."""
    data = delta.to_dict() if txid is None else {**delta.to_dict(), "txid": txid}
    payload = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
    return b"%s %d %08x %s\n" % (MAGIC, len(payload), zlib.crc32(payload), payload)


@dataclass
class Parsed:
    deltas: list[UsageDelta] = field(default_factory=list)
    txids: dict[str, int] = field(default_factory=dict)  # delta id -> txid of an unknown-outcome write
    torn_tail: bytes = b""  # an incomplete last record (a crash mid-append): reported, skipped
    corrupt: list[str] = field(default_factory=list)  # damage before the end: the file is quarantined


def _decode_line(line: bytes) -> tuple[UsageDelta, int | None]:
    magic, length, crc, payload = line.split(b" ", 3)
    if magic != MAGIC or int(length) != len(payload) or int(crc, 16) != zlib.crc32(payload):
        raise ValueError("bad frame or checksum")
    data = json.loads(payload)
    return UsageDelta.from_dict(data), data.get("txid")


def decode(data: bytes) -> Parsed:
    """Every intact record, in order. A last line without its newline is a torn tail; any other
    bad line is corruption."""
    parsed = Parsed()
    lines = data.split(b"\n")
    last = lines.pop()  # b"" when the data ends with a newline
    for number, line in enumerate(lines, 1):
        try:
            delta, txid = _decode_line(line)
        except (ValueError, TypeError, KeyError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            parsed.corrupt.append(f"line {number}: {exc}")
            continue
        parsed.deltas.append(delta)
        if txid is not None:
            parsed.txids[delta.id] = txid
    if last:
        parsed.torn_tail = last
    return parsed


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BufferWriter:
    """Appends deltas to this process's current buffer file; not thread-safe (one caller at a time)."""

    def __init__(self, directory: Path, max_bytes: int = 8 * 1024 * 1024):
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0
        self._seq = 0
        self._stem = f"{socket.gethostname()}_{os.getpid()}_{int(time.time())}"

    @property
    def has_open_file(self) -> bool:
        return self._fd is not None

    def append_many(self, deltas: Iterable[UsageDelta], txid: int | None = None) -> None:
        """Write and fsync every delta, or raise OSError (disk full, permissions): nothing is
        acknowledged that is not on disk."""
        data = b"".join(encode(d, txid) for d in deltas)
        if not data:
            return
        if self._fd is None:
            self._open()
        try:
            self._write_all(data)
            os.fsync(self._fd)
        except OSError:
            # Nothing torn stays behind: the file is cut back to its last whole record (a full
            # disk takes part of a write, or returns short), then sealed; the caller is told.
            self._truncate_to(self._size)
            self.seal()
            raise
        self._size += len(data)
        if self._size >= self.max_bytes:
            self.seal()

    def _write_all(self, data: bytes) -> None:
        """os.write may write less than asked (a nearly full disk): loop, and call a write that
        takes nothing a failure."""
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            if written <= 0:
                raise OSError(errno.ENOSPC, "the buffer file took no more bytes")
            view = view[written:]

    def _truncate_to(self, size: int) -> None:
        try:
            os.ftruncate(self._fd, size)
            os.fsync(self._fd)
        except OSError as exc:  # the reader still stops at a torn tail, which it reports and skips
            logger.error("could not cut usage buffer file %s back to %d bytes: %s", self._path, size, exc)

    def _open(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._seq += 1
        path = self.directory / f"{self._stem}_{self._seq:06d}{OPEN_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        fsync_dir(self.directory)  # the new file's name is durable too
        self._fd, self._path, self._size = fd, path, 0

    def seal(self) -> None:
        """Close the current file and rename it `.buf`, ready for a drainer."""
        if self._fd is None:
            return
        fd, path = self._fd, self._path
        self._fd = self._path = None
        try:
            if self._size:
                os.rename(path, path.with_suffix(SEALED_SUFFIX))
            else:
                os.unlink(path)
            fsync_dir(self.directory)
        except OSError as exc:
            logger.error("could not seal usage buffer file %s: %s", path, exc)
        finally:
            os.close(fd)  # releases the lock last, so no drainer sees a half-sealed file


def directory_writable(directory: Path) -> bool:
    """Can a new buffer file be created and synced here now? (The gateway probes this while it
    refuses requests for want of anywhere to record them.)"""
    probe = Path(directory) / f".probe-{os.getpid()}"
    try:
        Path(directory).mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"x")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.unlink(probe)
        return True
    except OSError:
        return False
