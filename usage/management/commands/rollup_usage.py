import sys
from datetime import datetime

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from usage.rollups import RebuildRefused, rebuild as rebuild_from, roll_up


def parse_time(option: str, raw: str | None) -> datetime | None:
    if raw is None:
        return None
    value = parse_datetime(raw)
    if value is None:
        try:
            value = datetime.fromisoformat(raw)
        except ValueError:
            raise CommandError(f"{option} {raw!r} is not a time such as 2026-11-01 or 2026-11-01T13:00+01:00") from None
    if timezone.is_naive(value):
        value = timezone.make_aware(value)  # read in TIME_ZONE
    return value


class Command(BaseCommand):
    help = "Roll 5-minute usage up into hours, days and months up to now (or --until); --rebuild recomputes from --since."

    def add_arguments(self, parser):
        parser.add_argument("--since", help="With --rebuild: recompute rolled periods from this time (TIME_ZONE if no offset).")
        parser.add_argument("--until", help="Roll up to this time instead of now.")
        parser.add_argument("--rebuild", action="store_true", help="Recompute already-rolled periods from --since.")

    def handle(self, since, until, rebuild: bool, **options):
        since_at, until_at = parse_time("--since", since), parse_time("--until", until)
        progress = self._progress()
        if rebuild:
            if since_at is None:
                raise CommandError("--rebuild needs --since (the first day to recompute).")
            try:
                summary = rebuild_from(since_at, progress=progress)
            except RebuildRefused as exc:
                raise CommandError(str(exc)) from None
        else:
            summary = roll_up(until=until_at, progress=progress)
        if self.stdout.isatty():
            self.stdout.write("")
        self.stdout.write(summary.line())

    def _progress(self):
        tty = self.stdout.isatty()
        state = {"last": -1}

        def report(done: int, total: int):
            if tty:
                width = 30
                filled = width * done // max(total, 1)
                sys.stdout.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} hours")
                sys.stdout.flush()
            elif total and done * 10 // total != state["last"]:
                state["last"] = done * 10 // total
                self.stdout.write(f"rolled {done}/{total} hours")

        return report
