from decimal import Decimal, InvalidOperation

from django.core.management.base import BaseCommand, CommandError

from usage.budgets import BUDGET_PERIODS, set_budget
from usage.money import usd_exact


class Command(BaseCommand):
    help = "Create or update a spend cap for a user, or the default cap of a period for users without their own."

    def add_arguments(self, parser):
        who = parser.add_mutually_exclusive_group(required=True)
        who.add_argument("username", nargs="?")
        who.add_argument("--default", action="store_true", help="The default for every user without their own.")
        parser.add_argument("--usd", required=True, metavar="AMOUNT", help="The cap in USD, such as 25 or 0.50.")
        parser.add_argument("--period", required=True, choices=BUDGET_PERIODS)
        parser.add_argument("--warn-percent", type=int, metavar="N", help="Warn past N%% of the cap (1-100).")
        parser.add_argument("--inactive", action="store_true", help="Keep the budget but do not enforce it.")

    def handle(self, username, default, usd: str, period, warn_percent, inactive, **options):
        try:
            amount = Decimal(usd)
        except InvalidOperation:
            raise CommandError(f"--usd {usd!r} is not a number of dollars (such as 25 or 0.50)") from None
        try:
            budget, created = set_budget(username=None if default else username, period=period, amount_usd=amount,
                                         warn_percent=warn_percent, active=not inactive)
        except ValueError as exc:
            message = str(exc)
            raise CommandError(message[:1].upper() + message[1:]) from None
        who = "default" if budget.is_default else budget.user.username
        state = "inactive" if not budget.is_active else "active"
        warn = f", warning at {budget.warn_percent}%" if budget.warn_percent else ""
        self.stdout.write(f"{'Created' if created else 'Updated'} {who} {period} budget: ${usd_exact(budget.limit_nanos)}"
                          f"{warn} ({state})")
