"""What a budget says of a request, detached from the ORM: the rule (`BudgetRule`), which rules apply
to one request (`applicable`), a rule with its spend (`BudgetState`), and the verdict the gateway
sends (`verdict`: the headers, and why a request is refused). Pure Python, no database: the gateway's
book and the pages' exact reads both end here.
"""

import functools
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.utils import timezone

from usage.budgets.periods import BUDGET_PERIODS
from usage.models import Budget
from usage.money import usd_exact

SCOPES = Budget.Scope
# Whose spend a budget of each scope counts: a default budget counts each user's own.
SPENDER = {SCOPES.USER: "user", SCOPES.DEFAULT: "user", SCOPES.KEY: "key", SCOPES.PROJECT: "project"}


@dataclass(frozen=True)
class BudgetRule:
    """What the gateway needs of a budget, detached from the ORM. `subject_id` is the user's, the
    key's or the project's id (None for a default)."""

    budget_id: int
    scope: str
    subject_id: int | None
    period: str
    limit_nanos: int
    warn_percent: int | None
    label: str = ""  # the subject as people name it: username, key prefix, project public id

    @classmethod
    def of(cls, budget: Budget, label: str | None = None) -> "BudgetRule":
        subject = getattr(budget, f"{Budget.SUBJECT_FIELDS[budget.scope]}_id") if budget.scope in Budget.SUBJECT_FIELDS \
            else None
        return cls(budget.pk, budget.scope, subject, budget.period, budget.limit_nanos, budget.warn_percent,
                   budget.subject_label if label is None else label)

    @property
    def spender(self) -> str:
        return SPENDER[self.scope]


def applicable(rules: list[BudgetRule], user_id: int, key_id: int | None = None,
               project_id: int | None = None) -> list[BudgetRule]:
    """The budgets of one request: the user's own budgets plus the defaults of the periods they have
    none of, then the key's and the project's budgets on top."""
    own = {r.period: r for r in rules if r.scope == SCOPES.USER and r.subject_id == user_id}
    defaults = {r.period: r for r in rules if r.scope == SCOPES.DEFAULT}
    found = [own.get(period) or defaults[period] for period in BUDGET_PERIODS if period in own or period in defaults]
    found += [r for r in rules if r.scope == SCOPES.KEY and key_id is not None and r.subject_id == key_id]
    found += [r for r in rules if r.scope == SCOPES.PROJECT and project_id is not None and r.subject_id == project_id]
    return found


@dataclass(frozen=True)
class BudgetState:
    rule: BudgetRule
    spend_nanos: int
    start: datetime | None
    resets_at: datetime | None

    @property
    def remaining_nanos(self) -> int:
        return self.rule.limit_nanos - self.spend_nanos

    @property
    def exceeded(self) -> bool:
        return self.spend_nanos >= self.rule.limit_nanos

    @property
    def warning(self) -> bool:
        percent = self.rule.warn_percent
        # spend / limit >= percent / 100, in integers.
        return percent is not None and self.spend_nanos * 100 >= self.rule.limit_nanos * percent

    @property
    def percent_used(self) -> Decimal:
        if not self.rule.limit_nanos:
            return Decimal(100)
        return (Decimal(self.spend_nanos) * 100 / self.rule.limit_nanos).quantize(Decimal("0.1"))

    def refusal_message(self) -> str:
        reset = f"It resets at {self.resets_at.isoformat()}." if self.resets_at else "It does not reset."
        whose = {SCOPES.USER: "your", SCOPES.DEFAULT: "your",
                 SCOPES.KEY: f"this API key's ({self.rule.label})",
                 SCOPES.PROJECT: f"project {self.rule.label}'s"}[self.rule.scope]
        return (f"Budget exceeded: {whose} {self.rule.period} budget is ${usd_exact(self.rule.limit_nanos)} and "
                f"${usd_exact(self.spend_nanos)} has been spent. {reset} Ask an administrator to raise it.")

    def as_dict(self) -> dict:
        return {
            "id": self.rule.budget_id,
            "scope": self.rule.scope,
            "subject": self.rule.label,
            "period": self.rule.period,
            "limit_usd": usd_exact(self.rule.limit_nanos),
            "spend_usd": usd_exact(self.spend_nanos),
            "remaining_usd": usd_exact(self.remaining_nanos),
            "resets_at": self.resets_at.isoformat() if self.resets_at else None,
            "warn_percent": self.rule.warn_percent,
            "warning": self.warning,
            "is_default": self.rule.scope == SCOPES.DEFAULT,
        }


def tightest(states: list[BudgetState]) -> BudgetState | None:
    """The applicable budget with the least remaining (the one the response headers describe)."""
    return min(states, key=lambda s: (s.remaining_nanos, s.rule.period, s.rule.scope), default=None)


@dataclass(frozen=True)
class BudgetVerdict:
    """What budgets say of one request: the headers to send, and why it is refused (None: let it through)."""

    headers: tuple[tuple[str, str], ...] = ()
    refusal: str | None = None


NO_BUDGET = BudgetVerdict()


@functools.lru_cache(maxsize=64)
def reset_header(resets_at: datetime) -> str:
    """When a budget resets, in the gateway's time zone (settings.TIME_ZONE; the gateway activates
    no other), as its headers say it: the same few instants on every request, formatted once."""
    return timezone.localtime(resets_at, timezone.get_default_timezone()).isoformat()


def verdict(states: list[BudgetState]) -> BudgetVerdict:
    """The tightest budget (the tightest exceeded one, if any) in headers; refused if any is exceeded."""
    over = [s for s in states if s.exceeded]
    tight = tightest(over or states)
    if tight is None:
        return NO_BUDGET
    headers = [("x-codevector-budget-limit-usd", usd_exact(tight.rule.limit_nanos)),
               ("x-codevector-budget-remaining-usd", usd_exact(max(tight.remaining_nanos, 0))),
               ("x-codevector-budget-scope", tight.rule.scope)]
    if tight.resets_at:
        headers.append(("x-codevector-budget-reset", reset_header(tight.resets_at)))
    if any(s.warning for s in states):
        headers.append(("x-codevector-budget-warning", "true"))
    return BudgetVerdict(tuple(headers), over[0].refusal_message() if over else None)
