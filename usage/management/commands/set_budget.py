from decimal import Decimal, InvalidOperation

from django.core.management.base import BaseCommand, CommandError

from usage.budgets.periods import BUDGET_PERIODS
from usage.budgets.setting import set_budget
from usage.money import usd_exact


def percent_list(text: str) -> list[int]:
    """--alert-at 50,80 → [50, 80]; "" or "none" → [] (no alerts)."""
    if text.strip().lower() in ("", "none"):
        return []
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise CommandError(f"--alert-at {text!r}: whole percents separated by commas, such as 50,80") from None


class Command(BaseCommand):
    help = ("Create or update a spend cap for a user, an API key (--key PREFIX), a project (--project proj_…), "
            "or the default cap of a period for users without their own (--default).")

    def add_arguments(self, parser):
        who = parser.add_mutually_exclusive_group(required=True)
        who.add_argument("username", nargs="?")
        who.add_argument("--default", action="store_true", help="The default for every user without their own.")
        who.add_argument("--key", metavar="PREFIX", help="An API key's budget, the key named by its prefix (cvk_…).")
        who.add_argument("--project", metavar="PROJECT_ID", help="A project's budget, by its public id (proj_…).")
        parser.add_argument("--usd", required=True, metavar="AMOUNT", help="The cap in USD, such as 25 or 0.50.")
        parser.add_argument("--period", required=True, choices=BUDGET_PERIODS)
        parser.add_argument("--warn-percent", type=int, metavar="N", help="Warn past N%% of the cap (1-100).")
        parser.add_argument("--alert-at", metavar="P,P", type=percent_list,
                            help="Send an alert (email, webhook) once per period when spend reaches each of these "
                                 "percents of the cap, such as 50,80,100; 'none' removes them. Unset: kept as they are.")
        parser.add_argument("--inactive", action="store_true", help="Keep the budget but do not enforce it.")

    def handle(self, username, default, key, project, usd: str, period, warn_percent, alert_at, inactive, **options):
        try:
            amount = Decimal(usd)
        except InvalidOperation:
            raise CommandError(f"--usd {usd!r} is not a number of dollars (such as 25 or 0.50)") from None
        try:
            budget, created = set_budget(username=username, key_prefix=key, project_id=project, period=period,
                                         amount_usd=amount, warn_percent=warn_percent, active=not inactive,
                                         alert_percents=alert_at)
        except ValueError as exc:
            message = str(exc)
            raise CommandError(message[:1].upper() + message[1:]) from None
        who = budget.subject_label if budget.scope in ("user", "default") else f"{budget.scope} {budget.subject_label}"
        state = "inactive" if not budget.is_active else "active"
        warn = f", warning at {budget.warn_percent}%" if budget.warn_percent else ""
        alerts = f", alerts at {', '.join(f'{p}%' for p in budget.alert_percents)}" if budget.alert_percents else ""
        self.stdout.write(f"{'Created' if created else 'Updated'} {who} {period} budget: ${usd_exact(budget.limit_nanos)}"
                          f"{warn}{alerts} ({state})")
