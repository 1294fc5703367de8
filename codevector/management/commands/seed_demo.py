from django.core.management.base import BaseCommand, CommandError

from codevector.demo import seed_demo
from usage.money import nanos_to_usd, usd_for_people


class Command(BaseCommand):
    help = ("Create demo users, keys and facades and a realistic usage history through the ledger, then roll it "
            "up. Does nothing when usage exists, unless --force.")

    def add_arguments(self, parser):
        parser.add_argument("--days", type=int, default=90, help="Days of history, ending today (default 90).")
        parser.add_argument("--users", type=int, default=25, help="Demo users (default 25).")
        parser.add_argument("--seed", type=int, default=0, help="The same seed gives the same history (default 0).")
        parser.add_argument("--force", action="store_true", help="Add a history even though usage exists.")
        parser.add_argument("--mock-url", default="http://127.0.0.1:8001",
                            help="Base URL of the mock upstream for demo facades that must be created.")

    def handle(self, days, users, seed, force, mock_url, **options):
        try:
            result = seed_demo(days=days, users=users, seed=seed, force=force, mock_url=mock_url)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if result.skipped:
            self.stdout.write("Usage exists already: no demo history added (use --force to add one anyway).")
            return
        self.stdout.write(
            f"Demo history: {days} days, {len(result.usernames)} users ({result.users_created} new, "
            f"{result.keys_created} keys), {result.requests:,} requests, {usd_for_people(nanos_to_usd(result.cost_nanos))}."
        )
