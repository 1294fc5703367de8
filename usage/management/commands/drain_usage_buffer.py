from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from usage.degraded.drain import drain, replay_log


class Command(BaseCommand):
    help = ("Replay usage deltas buffered on disk during a database outage, exactly once. "
            "Quarantined files are reported, not an error.")

    def add_arguments(self, parser):
        parser.add_argument("--dir", type=Path, default=None, help="Buffer directory (default: USAGE_BUFFER_DIR).")
        parser.add_argument("--from-log", type=Path, metavar="FILE",
                            help="Replay the deltas logged as lost (usage_delta_lost lines) in this log file.")

    def handle(self, dir, from_log, **options):
        try:
            if from_log:
                try:
                    with open(from_log, encoding="utf-8", errors="replace") as lines:
                        report = replay_log(lines)
                except OSError as exc:
                    raise CommandError(f"Cannot read {from_log}: {exc.strerror or exc}") from None
            else:
                report = drain(dir or settings.USAGE_BUFFER_DIR)
        except DatabaseError as exc:
            raise CommandError(f"The database is not answering ({exc}); buffered files are kept for the next run.") from None
        self.stdout.write(
            f"Replayed {report.applied} deltas from {report.files} file(s); "
            f"{report.duplicates} already applied (skipped); {report.torn_records} torn record(s) skipped; "
            f"{len(report.quarantined)} file(s) quarantined."
        )
        for path in report.quarantined:
            self.stdout.write(f"  quarantined: {path}")
