"""The book the gateway checks on every request (`BudgetBook.check`): an in-process snapshot of the
active budgets and each period's exact spend, read in the background, plus the spend this process
has recorded since. Everything here that the gateway calls per request is pure Python, no database.
"""

from collections import deque
from dataclasses import dataclass
from datetime import datetime
from time import monotonic

from django.utils import timezone

from usage.budgets.periods import BUDGET_PERIODS, budget_period_bounds
from usage.budgets.rules import NO_BUDGET, SCOPES, BudgetRule, BudgetState, BudgetVerdict, verdict
from usage.models import Budget
from usage.reads.spend import spend_by_key, spend_by_project, spend_by_user

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
# Each spender kind's exact spend over a span, for a set of ids (users: None, every user).
SPEND_READS = {"user": spend_by_user, "key": spend_by_key, "project": spend_by_project}


def read_spend(start: datetime | None, end: datetime, rules) -> Spend:
    """Each budgeted user's, key's and project's exact spend over [start, end), for `rules` (all of
    one period). With a default among them every user's spend is read (a default applies to all)."""
    wanted: dict[str, set[int] | None] = {"user": set(), "key": set(), "project": set()}
    for rule in rules:
        if rule.scope == SCOPES.DEFAULT:
            wanted["user"] = None
        elif wanted[rule.spender] is not None:
            wanted[rule.spender].add(rule.subject_id)
    return {kind: SPEND_READS[kind](start, end, ids) if ids is None or ids else {} for kind, ids in wanted.items()}


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
