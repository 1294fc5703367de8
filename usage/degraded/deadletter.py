"""Degraded mode's last resort and its line format: what neither the database nor the buffer can
take, or what the database refuses, becomes one marked log line per delta, replayable with
`drain_usage_buffer --from-log`.

- `usage_delta_lost {json}`: neither the database nor the buffer could take the delta (usage.lost);
- `usage_delta_rejected {json with its reason}`: the database refused it (a constraint, not an
  outage), kept in the log and in a dead-letter file under quarantine/, replayable once the cause
  is fixed;
- `usage_rollup_refused {json}`: a rollup group whose counter would pass what a 64-bit column holds.
"""

import json
import logging
import os
import socket
from collections.abc import Iterable
from pathlib import Path

from usage.degraded.buffer import QUARANTINE
from usage.ledger.delta import UsageDelta

logger = logging.getLogger(__name__)

LOST_MARKER = "usage_delta_lost "
REJECTED_MARKER = "usage_delta_rejected "
REPLAYABLE_MARKERS = (LOST_MARKER, REJECTED_MARKER)
ROLLUP_REFUSED_MARKER = "usage_rollup_refused "


def log_lost(deltas: list[UsageDelta], log: logging.Logger) -> None:
    """Each delta as one `usage_delta_lost {json}` line, at CRITICAL, on the caller's logger."""
    for delta in deltas:
        log.critical("%s%s", LOST_MARKER, json.dumps(delta.to_dict(), separators=(",", ":")))


def reject(deltas: list[UsageDelta], reason: str, directory: Path) -> None:
    """Dead-letter deltas the database refused: one `usage_delta_rejected {json}` line each, with
    the reason, in the log and in quarantine/rejected-<host>_<pid>.log (fsynced); both are
    replayed by `drain_usage_buffer --from-log FILE` once the cause is fixed (the deltas' ids make a
    second replay count nothing)."""
    _dead_letter([REJECTED_MARKER + json.dumps({**d.to_dict(), "reason": reason}, separators=(",", ":"))
                  for d in deltas], directory)


def _dead_letter(lines: list[str], directory: Path) -> None:
    """Each line in the log and appended (fsynced) to quarantine/rejected-<host>_<pid>.log."""
    for line in lines:
        logger.error("%s", line)
    Path(directory).mkdir(mode=0o700, parents=True, exist_ok=True)
    quarantine = Path(directory) / QUARANTINE
    quarantine.mkdir(mode=0o700, exist_ok=True)
    path = quarantine / f"rejected-{socket.gethostname()}_{os.getpid()}.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)  # deltas name users and keys
    with open(fd, "a", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in lines))
        handle.flush()
        os.fsync(handle.fileno())



def refuse_rollup(records: list[dict], directory: Path) -> None:
    """Dead-letter the groups a rollup could not write because a counter's sum passes 2**63 (what
    a 64-bit column can hold): one `usage_rollup_refused {json}` line each, in the log and in the
    quarantine's rejected-*.log, beside refused deltas. Their finer rows are kept, unchanged."""
    _dead_letter([ROLLUP_REFUSED_MARKER + json.dumps(record, separators=(",", ":"), default=str)
                  for record in records], directory)


def deltas_from_log(lines: Iterable[str]) -> list[UsageDelta]:
    """The deltas logged as lost (`usage_delta_lost {json}`) or rejected (`usage_delta_rejected
    {json}`), wherever the marker stands in a line."""
    deltas = []
    for line in lines:
        for marker in REPLAYABLE_MARKERS:
            index = line.find(marker)
            if index >= 0:
                deltas.append(UsageDelta.from_dict(json.loads(line[index + len(marker) :])))
                break
    return deltas
