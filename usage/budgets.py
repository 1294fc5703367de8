"""Budgets: spend caps per user and period, with calendar periods in settings.TIME_ZONE.

The gateway enforces them from an in-process snapshot (`BudgetBook`), refreshed in the
background with each user's exact spend from the read module, plus the spend this process has
recorded since. Everything here that the gateway calls per request is pure Python, no database.
"""

import functools
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from time import monotonic
from zoneinfo import ZoneInfo

from django.contrib.auth import get_user_model
from django.db import models, transaction
from django.utils import timezone

from usage.calendar import day_bounds, local_date, local_midnight, month_bounds, zone
from usage.models import Budget
from usage.money import usd_exact, usd_to_nanos
from usage.queries import spend_by_user

BUDGET_PERIODS = [p.value for p in Budget.Period]


def budget_period_bounds(period: str, now: datetime, tz: ZoneInfo | None = None) -> tuple[datetime | None, datetime | None]:
    """(start, reset) of the budget period holding `now`; (None, None) for `total`."""
    tz = tz or zone()
    if period == Budget.Period.DAILY:
        return day_bounds(now, tz)
    if period == Budget.Period.WEEKLY:
        today = local_date(now, tz)
        monday = today - timedelta(days=today.weekday())
        return local_midnight(monday, tz), local_midnight(monday + timedelta(days=7), tz)
    if period == Budget.Period.MONTHLY:
        return month_bounds(now, tz)
    if period == Budget.Period.TOTAL:
        return None, None
    raise ValueError(f"unknown budget period {period!r}")


@dataclass(frozen=True)
class BudgetRule:
    """What the gateway needs of a budget, detached from the ORM."""

    budget_id: int
    user_id: int | None
    period: str
    limit_nanos: int
    warn_percent: int | None

    @classmethod
    def of(cls, budget: Budget) -> "BudgetRule":
        return cls(budget.pk, budget.user_id, budget.period, budget.limit_nanos, budget.warn_percent)


def applicable(rules: list[BudgetRule], user_id: int) -> list[BudgetRule]:
    """A user's own budgets plus the defaults of the periods they have none of."""
    own = {r.period: r for r in rules if r.user_id == user_id}
    defaults = {r.period: r for r in rules if r.user_id is None}
    return [own.get(period) or defaults[period] for period in BUDGET_PERIODS if period in own or period in defaults]


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
        return (f"Budget exceeded: your {self.rule.period} budget is ${usd_exact(self.rule.limit_nanos)} and "
                f"${usd_exact(self.spend_nanos)} has been spent. {reset} Ask an administrator to raise it.")

    def as_dict(self) -> dict:
        return {
            "period": self.rule.period,
            "limit_usd": usd_exact(self.rule.limit_nanos),
            "spend_usd": usd_exact(self.spend_nanos),
            "remaining_usd": usd_exact(self.remaining_nanos),
            "resets_at": self.resets_at.isoformat() if self.resets_at else None,
            "warn_percent": self.rule.warn_percent,
            "warning": self.warning,
            "is_default": self.rule.user_id is None,
        }


def tightest(states: list[BudgetState]) -> BudgetState | None:
    """The applicable budget with the least remaining (the one the response headers describe)."""
    return min(states, key=lambda s: (s.remaining_nanos, s.rule.period), default=None)


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
               ("x-codevector-budget-remaining-usd", usd_exact(max(tight.remaining_nanos, 0)))]
    if tight.resets_at:
        headers.append(("x-codevector-budget-reset", reset_header(tight.resets_at)))
    if any(s.warning for s in states):
        headers.append(("x-codevector-budget-warning", "true"))
    return BudgetVerdict(tuple(headers), over[0].refusal_message() if over else None)


@transaction.atomic
def set_budget(*, username: str | None, period: str, amount_usd: Decimal, warn_percent: int | None,
               active: bool) -> tuple[Budget, bool]:
    """Create or update the budget of a user (or the default) for a period."""
    if period not in BUDGET_PERIODS:
        raise ValueError(f"the period must be one of {', '.join(BUDGET_PERIODS)}")
    if warn_percent is not None and not 1 <= warn_percent <= 100:
        raise ValueError("the warning threshold is a percent from 1 to 100")
    user = None
    if username is not None:
        User = get_user_model()
        try:
            user = User.objects.get(username=username)
        except User.DoesNotExist:
            raise ValueError(f"no user named {username!r}") from None
    budget, created = Budget.objects.select_for_update().get_or_create(
        user=user, period=period,
        defaults={"limit_nanos": usd_to_nanos(amount_usd), "warn_percent": warn_percent, "is_active": active},
    )
    if not created:
        budget.limit_nanos = usd_to_nanos(amount_usd)
        budget.warn_percent = warn_percent
        budget.is_active = active
        budget.save()
    return budget, created


class LocalSpend:
    """What one process has recorded for one user since the last refresh, oldest first, with a
    running total, so a budget check costs O(1) however busy the user is."""

    __slots__ = ("entries", "total")

    def __init__(self):
        self.entries: deque[tuple[float, datetime, int]] = deque()  # (monotonic, at, nanos)
        self.total = 0

    def add(self, mono: float, at: datetime, nanos: int) -> None:
        self.entries.append((mono, at, nanos))
        self.total += nanos

    def drop_before(self, mono: float) -> None:
        while self.entries and self.entries[0][0] < mono:
            self.total -= self.entries.popleft()[2]

    def since(self, start: datetime | None) -> int:
        if start is None:
            return self.total
        earlier = 0
        for _, at, nanos in self.entries:  # only the entries before a boundary just crossed
            if at >= start:
                break
            earlier += nanos
        return self.total - earlier


@dataclass(frozen=True)
class BudgetSnapshot:
    """One read of the active budgets and each period's spend, indexed for the per-request check;
    built whole off the event loop, then put in place in one assignment (`BudgetBook.install`)."""

    rules: tuple[BudgetRule, ...]
    spend: dict[str, tuple[datetime | None, dict[int, int]]]  # period -> (start, user -> nanos)
    defaults: dict[str, BudgetRule]  # period -> the default budget
    own: dict[int, dict[str, BudgetRule]]  # user -> period -> their own budget
    read_started: float  # monotonic: what this process recorded before it is in `spend`

    @classmethod
    def read(cls, now: datetime | None = None) -> "BudgetSnapshot":
        now = now or timezone.now()
        read_started = monotonic()
        rules = tuple(BudgetRule.of(b) for b in Budget.objects.filter(is_active=True))
        spend = {}
        for period in {r.period for r in rules}:
            start, _ = budget_period_bounds(period, now)
            users = None if any(r.user_id is None and r.period == period for r in rules) else \
                {r.user_id for r in rules if r.period == period}
            spend[period] = (start, spend_by_user(start, now, users))
        own: dict[int, dict[str, BudgetRule]] = {}
        for rule in rules:
            if rule.user_id is not None:
                own.setdefault(rule.user_id, {})[rule.period] = rule
        return cls(rules, spend, {r.period: r for r in rules if r.user_id is None}, own, read_started)


EMPTY_SNAPSHOT = BudgetSnapshot((), {}, {}, {}, float("-inf"))


class BudgetBook:
    """The gateway's snapshot of budgets and spend: checked per request without a database read.

    `BudgetSnapshot.read()` (in a background thread) reads the active budgets and, per period,
    every user's exact spend since the period began; `install()` (on the event loop, the thread
    that checks and adds spend) puts it in place. Between refreshes, `add_spend()` counts what this
    process records (after the ledger committed it); entries committed before a read began are in
    the snapshot and dropped at install. If the database is down, the last snapshot plus the local
    spend since carry on.
    """

    def __init__(self):
        self._snapshot = EMPTY_SNAPSHOT
        self._local: dict[int, LocalSpend] = {}
        self._windows: dict[str, tuple[datetime | None, datetime | None]] = {}
        self.loaded = False

    def install(self, snapshot: BudgetSnapshot) -> None:
        """Put a snapshot in place. Call it from the thread that calls check() and add_spend():
        the local spend's running totals are not shared across threads."""
        self._snapshot, self._windows, self.loaded = snapshot, {}, True
        for local in self._local.values():
            local.drop_before(snapshot.read_started)

    def refresh(self, now: datetime | None = None) -> None:
        """read() and install() in the caller's thread (tests and single-threaded callers)."""
        self.install(BudgetSnapshot.read(now))

    def applies_to(self, user_id: int) -> bool:
        """Whether any budget applies to the user: a dictionary look-up, asked before the clock is read."""
        snapshot = self._snapshot
        return bool(snapshot.defaults) or user_id in snapshot.own

    def _applicable(self, user_id: int) -> list[BudgetRule]:
        """`applicable()` from the indexes built at refresh: O(periods), not O(budgets)."""
        snapshot = self._snapshot
        own, defaults = snapshot.own.get(user_id, {}), snapshot.defaults
        return [own.get(period) or defaults[period] for period in BUDGET_PERIODS
                if period in own or period in defaults]

    def add_spend(self, user_id: int, at: datetime, nanos: int) -> None:
        if nanos and self.applies_to(user_id):
            self._local.setdefault(user_id, LocalSpend()).add(monotonic(), at, nanos)

    def _window(self, period: str, now: datetime) -> tuple[datetime | None, datetime | None]:
        """budget_period_bounds, remembered until the period ends (zoneinfo arithmetic is not free)."""
        window = self._windows.get(period)
        if window is None or (window[1] is not None and not window[0] <= now < window[1]):
            window = self._windows[period] = budget_period_bounds(period, now)
        return window

    def states(self, user_id: int, now: datetime) -> list[BudgetState]:
        if not self.applies_to(user_id):
            return []
        local = self._local.get(user_id)
        spend = self._snapshot.spend
        states = []
        for rule in self._applicable(user_id):
            start, resets_at = self._window(rule.period, now)
            snapshot_start, by_user = spend.get(rule.period, (None, {}))
            # A snapshot from an earlier period (the day rolled over since) counts nothing now.
            spent = by_user.get(user_id, 0) if snapshot_start == start else 0
            if local is not None:
                spent += local.since(start)
            states.append(BudgetState(rule, spent, start, resets_at))
        return states

    def check(self, user_id: int, now: datetime) -> BudgetVerdict:
        """The gateway's one question per request, answered from the snapshot (no database)."""
        if not self.applies_to(user_id):
            return NO_BUDGET
        return verdict(self.states(user_id, now))


def states_for(user_id: int, now: datetime | None = None) -> list[BudgetState]:
    """The budgets that apply to a user now, with their exact spend (for pages and the API)."""
    now = now or timezone.now()
    rules = [BudgetRule.of(b) for b in Budget.objects.filter(is_active=True).filter(
        models.Q(user_id=user_id) | models.Q(user__isnull=True))]
    states = []
    for rule in applicable(rules, user_id):
        start, resets_at = budget_period_bounds(rule.period, now)
        spent = spend_by_user(start, now, {user_id}).get(user_id, 0)
        states.append(BudgetState(rule, spent, start, resets_at))
    return states


def state_of(budget: Budget, now: datetime | None = None) -> BudgetState:
    """One budget's current period and spend (a default budget: spend is per user, so none here)."""
    now = now or timezone.now()
    start, resets_at = budget_period_bounds(budget.period, now)
    spent = spend_by_user(start, now, {budget.user_id}).get(budget.user_id, 0) if budget.user_id else 0
    return BudgetState(BudgetRule.of(budget), spent, start, resets_at)
