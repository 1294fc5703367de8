"""Budgets: spend caps per user, API key, project (or a default per user) and period, with
calendar periods in settings.TIME_ZONE.

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
from usage.reads.spend import spend_by_key, spend_by_project, spend_by_user

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


def budget_subject(*, username: str | None = None, key_prefix: str | None = None,
                   project_id: str | None = None) -> tuple[str, dict]:
    """(scope, the subject field and its object) of a budget named as commands and the API name it:
    a username, a key's visible prefix, a project's public id, or none of them (the default)."""
    named = [n for n in (username, key_prefix, project_id) if n is not None]
    if len(named) > 1:
        raise ValueError("a budget is for one user, one key, one project, or the default: name one of them")
    if username is not None:
        User = get_user_model()
        try:
            return SCOPES.USER, {"user": User.objects.get(username=username)}
        except User.DoesNotExist:
            raise ValueError(f"no user named {username!r}") from None
    if key_prefix is not None:
        api_key_model = Budget._meta.get_field("key").related_model  # usage never imports gateway
        try:
            return SCOPES.KEY, {"key": api_key_model.objects.get(prefix=key_prefix)}
        except api_key_model.DoesNotExist:
            raise ValueError(f"no API key with the prefix {key_prefix!r} (keys are listed by their first "
                             "12 characters, such as cvk_AbCdEfGh)") from None
    if project_id is not None:
        project_model = Budget._meta.get_field("project").related_model
        try:
            return SCOPES.PROJECT, {"project": project_model.objects.get(public_id=project_id)}
        except project_model.DoesNotExist:
            raise ValueError(f"no project with the id {project_id!r} (ids look like proj_…)") from None
    return SCOPES.DEFAULT, {}


def alert_percents_error(percents) -> str | None:
    """Why a list of alert thresholds is refused, or None: distinct whole percents from 1 to 100."""
    if not isinstance(percents, list) or not all(isinstance(p, int) and not isinstance(p, bool) for p in percents):
        return "alert thresholds are a list of whole percents, such as [50, 80]"
    if any(not 1 <= p <= 100 for p in percents):
        return "each alert threshold is a percent from 1 to 100"
    if len(set(percents)) != len(percents):
        return "each alert threshold once"
    return None


@transaction.atomic
def set_budget(*, username: str | None = None, key_prefix: str | None = None, project_id: str | None = None,
               period: str, amount_usd: Decimal, warn_percent: int | None, active: bool,
               alert_percents: list[int] | None = None) -> tuple[Budget, bool]:
    """Create or update the budget of a user, a key, a project (or the default) for a period.
    `alert_percents` None keeps a budget's thresholds as they are ([] for a new one)."""
    if period not in BUDGET_PERIODS:
        raise ValueError(f"the period must be one of {', '.join(BUDGET_PERIODS)}")
    if warn_percent is not None and not 1 <= warn_percent <= 100:
        raise ValueError("the warning threshold is a percent from 1 to 100")
    if alert_percents is not None:
        if error := alert_percents_error(alert_percents):
            raise ValueError(error)
        alert_percents = sorted(alert_percents)
    scope, subject = budget_subject(username=username, key_prefix=key_prefix, project_id=project_id)
    values = {"limit_nanos": usd_to_nanos(amount_usd), "warn_percent": warn_percent, "is_active": active}
    if alert_percents is not None:
        values["alert_percents"] = alert_percents
    budget, created = Budget.objects.select_for_update().get_or_create(scope=scope, period=period, **subject,
                                                                        defaults=values)
    if not created:
        for name, value in values.items():
            setattr(budget, name, value)
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


Spend = dict[str, dict[int, int]]  # spender kind ("user", "key", "project") -> id -> nanos


def read_spend(start: datetime | None, end: datetime, rules) -> Spend:
    """Each budgeted user's, key's and project's exact spend over [start, end), for `rules` (all of
    one period). With a default among them every user's spend is read (a default applies to all)."""
    wanted: dict[str, set[int] | None] = {"user": set(), "key": set(), "project": set()}
    for rule in rules:
        if rule.scope == SCOPES.DEFAULT:
            wanted["user"] = None
        elif wanted[rule.spender] is not None:
            wanted[rule.spender].add(rule.subject_id)
    return {
        "user": spend_by_user(start, end, wanted["user"]) if wanted["user"] is None or wanted["user"] else {},
        "key": spend_by_key(start, end, wanted["key"]) if wanted["key"] else {},
        "project": spend_by_project(start, end, wanted["project"]) if wanted["project"] else {},
    }


@dataclass(frozen=True)
class BudgetSnapshot:
    """One read of the active budgets and each period's spend, indexed for the per-request check;
    built whole off the event loop, then put in place in one assignment (`BudgetBook.install`)."""

    rules: tuple[BudgetRule, ...]
    spend: dict[str, tuple[datetime | None, Spend]]  # period -> (start, spender kind -> id -> nanos)
    defaults: dict[str, BudgetRule]  # period -> the default budget
    own: dict[int, dict[str, BudgetRule]]  # user -> period -> their own budget
    keys: dict[int, tuple[BudgetRule, ...]]  # key -> its budgets
    projects: dict[int, tuple[BudgetRule, ...]]  # project -> its budgets
    read_started: float  # monotonic: what this process recorded before it is in `spend`

    @classmethod
    def read(cls, now: datetime | None = None) -> "BudgetSnapshot":
        now = now or timezone.now()
        read_started = monotonic()
        rules = tuple(BudgetRule.of(b) for b in Budget.objects.filter(is_active=True).select_related(
            "user", "key", "project"))
        spend = {}
        for period in {r.period for r in rules}:
            start, _ = budget_period_bounds(period, now)
            spend[period] = (start, read_spend(start, now, [r for r in rules if r.period == period]))
        own: dict[int, dict[str, BudgetRule]] = {}
        keys: dict[int, list[BudgetRule]] = {}
        projects: dict[int, list[BudgetRule]] = {}
        for rule in rules:
            if rule.scope == SCOPES.USER:
                own.setdefault(rule.subject_id, {})[rule.period] = rule
            elif rule.scope == SCOPES.KEY:
                keys.setdefault(rule.subject_id, []).append(rule)
            elif rule.scope == SCOPES.PROJECT:
                projects.setdefault(rule.subject_id, []).append(rule)
        return cls(rules, spend, {r.period: r for r in rules if r.scope == SCOPES.DEFAULT}, own,
                   {k: tuple(v) for k, v in keys.items()}, {p: tuple(v) for p, v in projects.items()}, read_started)


EMPTY_SNAPSHOT = BudgetSnapshot((), {}, {}, {}, {}, {}, float("-inf"))


class BudgetBook:
    """The gateway's snapshot of budgets and spend: checked per request without a database read.

    `BudgetSnapshot.read()` (in a background thread) reads the active budgets and, per period,
    the exact spend since the period began of every user, key and project a budget applies to;
    `install()` (on the event loop, the thread that checks and adds spend) puts it in place. Between
    refreshes, `add_spend()` counts what this process records (after the ledger committed it) for
    the request's user, key and project; entries committed before a read began are in the snapshot
    and dropped at install. If the database is down, the last snapshot plus the local spend since
    carry on. Across workers each sees the others' spend at its next refresh: the overshoot of any
    budget, whatever its scope, is bounded by what the other workers spend in one refresh interval.
    """

    def __init__(self):
        self._snapshot = EMPTY_SNAPSHOT
        self._local: dict[tuple[str, int], LocalSpend] = {}  # (spender kind, id) -> what this process recorded
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

    def applies_to(self, user_id: int, key_id: int | None = None, project_id: int | None = None) -> bool:
        """Whether any budget applies to a request: dictionary look-ups, asked before the clock is read."""
        snapshot = self._snapshot
        return bool(snapshot.defaults) or user_id in snapshot.own or key_id in snapshot.keys \
            or project_id in snapshot.projects

    def _applicable(self, user_id: int, key_id: int | None, project_id: int | None) -> list[BudgetRule]:
        """`applicable()` from the indexes built at refresh: O(periods), not O(budgets)."""
        snapshot = self._snapshot
        own, defaults = snapshot.own.get(user_id, {}), snapshot.defaults
        rules = [own.get(period) or defaults[period] for period in BUDGET_PERIODS
                 if period in own or period in defaults]
        return rules + list(snapshot.keys.get(key_id, ())) + list(snapshot.projects.get(project_id, ()))

    def add_spend(self, user_id: int, at: datetime, nanos: int, key_id: int | None = None,
                  project_id: int | None = None) -> None:
        if not nanos:
            return
        snapshot = self._snapshot
        if snapshot.defaults or user_id in snapshot.own:
            self._local.setdefault(("user", user_id), LocalSpend()).add(monotonic(), at, nanos)
        if key_id in snapshot.keys:
            self._local.setdefault(("key", key_id), LocalSpend()).add(monotonic(), at, nanos)
        if project_id in snapshot.projects:
            self._local.setdefault(("project", project_id), LocalSpend()).add(monotonic(), at, nanos)

    def _window(self, period: str, now: datetime) -> tuple[datetime | None, datetime | None]:
        """budget_period_bounds, remembered until the period ends (zoneinfo arithmetic is not free)."""
        window = self._windows.get(period)
        if window is None or (window[1] is not None and not window[0] <= now < window[1]):
            window = self._windows[period] = budget_period_bounds(period, now)
        return window

    def states(self, user_id: int, now: datetime, key_id: int | None = None,
               project_id: int | None = None) -> list[BudgetState]:
        if not self.applies_to(user_id, key_id, project_id):
            return []
        spend = self._snapshot.spend
        subjects = {"user": user_id, "key": key_id, "project": project_id}
        states = []
        for rule in self._applicable(user_id, key_id, project_id):
            start, resets_at = self._window(rule.period, now)
            snapshot_start, by_kind = spend.get(rule.period, (None, {}))
            kind, subject = rule.spender, subjects[rule.spender]
            # A snapshot from an earlier period (the day rolled over since) counts nothing now.
            spent = by_kind.get(kind, {}).get(subject, 0) if snapshot_start == start else 0
            local = self._local.get((kind, subject))
            if local is not None:
                spent += local.since(start)
            states.append(BudgetState(rule, spent, start, resets_at))
        return states

    def check(self, user_id: int, now: datetime, key_id: int | None = None,
              project_id: int | None = None) -> BudgetVerdict:
        """The gateway's one question per request, answered from the snapshot (no database)."""
        if not self.applies_to(user_id, key_id, project_id):
            return NO_BUDGET
        return verdict(self.states(user_id, now, key_id, project_id))


def _spent(rule: BudgetRule, start: datetime | None, end: datetime, user_id: int | None = None) -> int:
    """One budget's exact spend over [start, end); for a default budget, `user_id`'s."""
    subject = user_id if rule.scope == SCOPES.DEFAULT else rule.subject_id
    if subject is None:
        return 0
    read = {"user": spend_by_user, "key": spend_by_key, "project": spend_by_project}[rule.spender]
    return read(start, end, {subject}).get(subject, 0)


def states_for(user_id: int, now: datetime | None = None, key_id: int | None = None,
               project_id: int | None = None) -> list[BudgetState]:
    """The budgets that apply to a user now (or to a request of one of their keys: the key's and
    its project's budgets too), with their exact spend (for pages and the API)."""
    now = now or timezone.now()
    subjects = models.Q(scope=SCOPES.DEFAULT) | models.Q(scope=SCOPES.USER, user_id=user_id)
    if key_id is not None:
        subjects |= models.Q(scope=SCOPES.KEY, key_id=key_id)
    if project_id is not None:
        subjects |= models.Q(scope=SCOPES.PROJECT, project_id=project_id)
    rules = [BudgetRule.of(b) for b in Budget.objects.filter(subjects, is_active=True).select_related(
        "user", "key", "project")]
    states = []
    for rule in applicable(rules, user_id, key_id, project_id):
        start, resets_at = budget_period_bounds(rule.period, now)
        states.append(BudgetState(rule, _spent(rule, start, now, user_id), start, resets_at))
    return states


def state_of(budget: Budget, now: datetime | None = None) -> BudgetState:
    """One budget's current period and spend (a default budget: spend is per user, so none here)."""
    now = now or timezone.now()
    start, resets_at = budget_period_bounds(budget.period, now)
    rule = BudgetRule.of(budget)
    return BudgetState(rule, _spent(rule, start, now), start, resets_at)
