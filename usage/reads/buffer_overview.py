"""Degraded mode as the usage page's banner shows it: this host's buffer directory (files not yet
drained, quarantined files) and the events every gateway process reported. Read from the disk and
the database, never from a running store."""

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings
from django.db.models import Max

from usage.degraded.buffer import QUARANTINE, decode
from usage.degraded.drain import candidates
from usage.models import BufferEvent


@dataclass
class BufferOverview:
    """Degraded mode as the usage page's banner shows it (this host's buffer directory plus the
    events every process reported)."""

    pending_files: int
    pending_deltas: int
    oldest_pending: datetime | None
    quarantined_files: int
    lost: int
    refused: int
    last_drain_at: datetime | None
    rejected: int = 0

    @property
    def needs_attention(self) -> bool:
        return bool(self.pending_files or self.quarantined_files or self.lost or self.refused or self.rejected)


def buffer_overview(buffer_dir: Path | None = None, since: datetime | None = None) -> BufferOverview:
    directory = Path(buffer_dir or settings.USAGE_BUFFER_DIR)
    files = candidates(directory)
    pending_deltas = 0
    mtimes = []
    for path in files:
        try:
            pending_deltas += len(decode(path.read_bytes()).deltas)
            mtimes.append(path.stat().st_mtime)
        except OSError:  # drained meanwhile
            continue
    quarantine = directory / QUARANTINE
    totals = BufferEvent.objects.totals(since)
    last_drain = BufferEvent.objects.filter(kind="drained").aggregate(last=Max("at"))["last"]
    return BufferOverview(
        pending_files=len(files),
        pending_deltas=pending_deltas,
        oldest_pending=datetime.fromtimestamp(min(mtimes), tz=UTC) if mtimes else None,
        quarantined_files=len(list(quarantine.iterdir())) if quarantine.is_dir() else 0,
        lost=totals.get("lost", 0),
        refused=totals.get("refused", 0),
        last_drain_at=last_drain,
        rejected=totals.get("rejected", 0),
    )
