from django.core.management.base import BaseCommand

from usage.tasks import sync_schedules


class Command(BaseCommand):
    help = ("Create or update CodeVector's django-q2 schedules (rollups and budget alerts every minute, retention "
            "daily; migrate creates them too). Idempotent.")

    def handle(self, **options):
        created, updated, removed = sync_schedules()
        self.stdout.write(f"Schedules: {len(created)} created, {len(updated)} updated, {len(removed)} removed"
                          + "".join(f"\n  {verb} {name}" for verb, names in
                                    (("created", created), ("updated", updated), ("removed", removed))
                                    for name in names))
