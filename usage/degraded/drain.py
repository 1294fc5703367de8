"""Degraded mode, replay side: buffered deltas go back into the ledger exactly once.

A drainer claims a file by taking its `flock` (free only once the writer has sealed it or is
gone) and renaming it `<name>.draining` (atomic; a second drainer's rename or lock fails). It
replays the records with the ledger's own statements, and in the same transaction inserts each
delta id into `usage_applied_delta`; an id already there is skipped. So a drainer killed at any
instant and run again, or two drainers at once, never count a delta twice.

Damage before a file's end sends the file to `quarantine/` (after its intact records are
replayed, which the applied ids make safe); a torn last record, the mark of a crash mid-append,
is reported and skipped. A delta the database refuses (a constraint, say its user was deleted)
is dead-lettered with its reason (`reject`) and the rest of its file replayed.
"""

import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from django.db import DatabaseError, InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from usage import sql
from usage.degraded.buffer import OPEN_SUFFIX, QUARANTINE, SEALED_SUFFIX, decode, fsync_dir
from usage.degraded.deadletter import deltas_from_log, reject
from usage.ledger.delta import UsageDelta
from usage.ledger.plan import write_with_cursor

logger = logging.getLogger(__name__)

DRAINING_SUFFIX = ".draining"
DELTAS_PER_TRANSACTION = 1000
# Errors that say "the database cannot take this write now" (an outage), as opposed to "the
# database refuses this data" (a constraint): on SQLite and through Django's connection.
DJANGO_UNAVAILABLE = (OperationalError, InterfaceError)
@dataclass
class DrainReport:
    files: int = 0
    applied: int = 0
    duplicates: int = 0
    torn_records: int = 0
    rejected: int = 0
    quarantined: list[str] = field(default_factory=list)

    def add(self, other: "DrainReport") -> None:
        self.files += other.files
        self.applied += other.applied
        self.duplicates += other.duplicates
        self.torn_records += other.torn_records
        self.rejected += other.rejected
        self.quarantined += other.quarantined


class OutcomeNotYetKnown(Exception):
    """A buffered write's transaction is still in progress: leave its file for a later run."""


def apply_once(deltas: Iterable[UsageDelta], landed: frozenset[str] = frozenset()) -> tuple[int, int]:
    """Apply the deltas whose ids were never applied, in one transaction. Returns (applied, skipped).

    `landed` names deltas whose live write is known to have committed after all: their ids are
    recorded as applied, their counters not added again.
    """
    unique = list({d.id: d for d in deltas}.values())
    if not unique:
        return 0, 0
    adapt = connection.ops.adapt_datetimefield_value
    now = adapt(timezone.now())
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql.claim_delta_ids(len(unique)), [v for d in unique for v in (d.id, now)])
        fresh_ids = {row[0] for row in cursor.fetchall()}
        fresh = [d for d in unique if d.id in fresh_ids and d.id not in landed]
        write_with_cursor(fresh, cursor, connection.vendor, adapt)
    return len(fresh), len(unique) - len(fresh)


def apply_in_chunks(deltas: list[UsageDelta], landed: frozenset[str] = frozenset(),
                    rejects: Path | None = None) -> tuple[int, int, int]:
    """(applied, skipped, rejected). A chunk the database refuses (a constraint, not an outage) is
    split in halves until the refused deltas stand alone: they are dead-lettered under `rejects`
    (a buffer directory) and the rest applied, so one bad delta never blocks a file. Outages raise."""
    applied = skipped = rejected = 0
    chunks = [deltas[start : start + DELTAS_PER_TRANSACTION] for start in range(0, len(deltas), DELTAS_PER_TRANSACTION)]
    while chunks:
        chunk = chunks.pop(0)
        try:
            a, s = apply_once(chunk, landed)
        except DJANGO_UNAVAILABLE:
            raise
        except (DatabaseError, OverflowError) as exc:  # OverflowError: past 2**63, SQLite's driver refuses it
            if rejects is None:
                raise
            if len(chunk) > 1:
                middle = len(chunk) // 2
                chunks[:0] = [chunk[:middle], chunk[middle:]]
                continue
            reject(chunk, f"{type(exc).__name__}: {exc}".strip(), rejects)
            rejected += 1
            continue
        applied, skipped = applied + a, skipped + s
    return applied, skipped, rejected


def landed_writes(txids: dict[str, int]) -> frozenset[str]:
    """Of the deltas buffered after a write with an unknown outcome, those whose transaction did
    commit (PostgreSQL's txid_status). An aborted or forgotten transaction did not land."""
    landed = set()
    by_txid: dict[int, list[str]] = {}
    for delta_id, txid in txids.items():
        by_txid.setdefault(txid, []).append(delta_id)
    with connection.cursor() as cursor:
        for txid, delta_ids in by_txid.items():
            cursor.execute(sql.TXID_STATUS, [txid])
            status = cursor.fetchone()[0]
            if status == "in progress":
                raise OutcomeNotYetKnown(txid)
            if status == "committed":
                landed.update(delta_ids)
    return frozenset(landed)


def candidates(directory: Path) -> list[Path]:
    """Files a drainer may try, oldest first: sealed, abandoned open ones, abandoned claims."""
    if not directory.is_dir():
        return []
    suffixes = (SEALED_SUFFIX, OPEN_SUFFIX, DRAINING_SUFFIX)
    return sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(suffixes))


def claim(path: Path) -> tuple[int, Path] | None:
    """Lock and rename a file for this drainer, or None if someone else has it."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Still the file we opened? Another drainer may have claimed and removed it meanwhile.
        if os.fstat(fd).st_nlink == 0 or os.stat(path).st_ino != os.fstat(fd).st_ino:
            raise FileNotFoundError(path)
        claimed = path if path.name.endswith(DRAINING_SUFFIX) else path.with_name(path.name + DRAINING_SUFFIX)
        if claimed != path:
            os.rename(path, claimed)
            fsync_dir(path.parent)
        return fd, claimed
    except (BlockingIOError, FileNotFoundError):
        os.close(fd)
        return None


def replay_file(fd: int, path: Path) -> DrainReport:
    report = DrainReport(files=1)
    with os.fdopen(os.dup(fd), "rb") as handle:
        parsed = decode(handle.read())
    landed = landed_writes(parsed.txids) if parsed.txids else frozenset()
    report.applied, report.duplicates, report.rejected = apply_in_chunks(parsed.deltas, landed, rejects=path.parent)
    if parsed.torn_tail:
        report.torn_records = 1
        logger.warning("usage buffer %s: skipped a torn last record of %d bytes (a crash mid-append)",
                       path.name, len(parsed.torn_tail))
    if parsed.corrupt:
        quarantine_dir = path.parent / QUARANTINE
        quarantine_dir.mkdir(mode=0o700, exist_ok=True)
        target = quarantine_dir / path.name.removesuffix(DRAINING_SUFFIX)
        os.rename(path, target)
        report.quarantined.append(str(target))
        logger.error("usage buffer %s quarantined (%d intact records replayed): %s", target,
                     len(parsed.deltas), "; ".join(parsed.corrupt[:5]))
    else:
        os.unlink(path)
    fsync_dir(path.parent)
    return report


def drain(directory: Path) -> DrainReport:
    """Replay every file this drainer can claim. Raises the database's error if it is down (the
    claimed file stays, unlocked, for the next run)."""
    report = DrainReport()
    for path in candidates(Path(directory)):
        claimed = claim(path)
        if claimed is None:
            continue
        fd, claimed_path = claimed
        try:
            report.add(replay_file(fd, claimed_path))
        except OutcomeNotYetKnown as exc:
            logger.info("usage buffer %s: transaction %s still in progress; retrying later", claimed_path.name, exc)
        finally:
            os.close(fd)
    return report


def replay_log(lines: Iterable[str]) -> DrainReport:
    """Replay logged deltas; one the database still refuses stops the replay with its error."""
    deltas = deltas_from_log(lines)
    applied, duplicates, _ = apply_in_chunks(deltas)
    return DrainReport(applied=applied, duplicates=duplicates)


def prune_applied_ids(older_than) -> int:
    with connection.cursor() as cursor:
        cursor.execute(sql.PRUNE_APPLIED_DELTA_IDS, [connection.ops.adapt_datetimefield_value(older_than)])
        return cursor.rowcount


