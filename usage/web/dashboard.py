"""What the usage pages show, built from the read module (usage.reads.queries): KPI cards, the charts'
series, the per-model table and the leaderboard's page, so views stay thin
and tests can compare each shown number with the read module's.
"""

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from django.core.paginator import Paginator

from usage.budgets import states as budgets
from usage.reads import queries
from usage.web.display import compact
from usage.models import Budget, BufferEvent
from usage.money import usd_for_people
from usage.reserved import is_reserved

DEFAULT_WINDOW = "7d"
WINDOW_LABELS = {"7d": "Last 7 days", "30d": "Last 30 days", "90d": "Last 90 days"}
LEADERBOARD_ORDERS = {"tokens": "Tokens", "spend": "Spend", "requests": "Requests"}
LEADERBOARD_GROUPS = {"user": "Users", "key": "API keys", "project": "Projects"}
LEADERBOARD_PAGE_SIZE = 100


@dataclass(frozen=True)
class Change:
    """Against the previous window of the same length: a percent, or `new`, or nothing to compare."""

    percent: Decimal | None
    direction: str  # up, down, flat, new, none

    @classmethod
    def between(cls, current: int, previous: int) -> "Change":
        if previous == 0:
            return cls(None, "new" if current else "none")
        value = (Decimal(current - previous) * 100 / previous).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)
        return cls(value, "up" if value > 0 else "down" if value < 0 else "flat")

    def __str__(self):
        if self.direction == "new":
            return "new this period"
        if self.direction == "none":
            return "no usage either period"
        sign = "+" if self.percent > 0 else "−" if self.percent < 0 else "±"
        return f"{sign}{abs(self.percent)}% vs previous"


@dataclass(frozen=True)
class Card:
    key: str
    label: str
    value: str  # the data-value attribute: exact (integers; USD with 9 decimals)
    display: str  # compact
    exact: str  # the tooltip
    change: Change


def cards(summary: "queries.Summary") -> list[Card]:
    now, before = summary.totals, summary.previous
    spend = now.spend_usd
    result = [Card("spend", "Spend (estimated USD)", f"{spend:f}", usd_for_people(spend), f"${spend:,f}",
                   Change.between(now.cost_nanos, before.cost_nanos))]
    for key, label in [("requests", "Requests"), ("input_tokens", "Input tokens"), ("output_tokens", "Output tokens")]:
        value = getattr(now, key)
        result.append(Card(key, label, str(value), compact(value), f"{value:,}",
                           Change.between(value, getattr(before, key))))
    return result


def chart_data(series: list["queries.DayPoint"]) -> dict:
    """The charts' data island: one label a day, zeros included (floats are for drawing only)."""
    return {
        "labels": [point.date.isoformat() for point in series],
        "spend": [float(point.totals.spend_usd) for point in series],
        "input": [point.totals.input_tokens for point in series],
        "output": [point.totals.output_tokens for point in series],
    }


def window_from(params) -> "queries.Window":
    """The window a page asks for (?period=); an unknown one falls back to the default."""
    try:
        return queries.resolve_window(params.get("period", DEFAULT_WINDOW))
    except ValueError:
        return queries.resolve_window(DEFAULT_WINDOW)


def tabs(params, name: str, labels: dict[str, str], active: str) -> list[dict]:
    """Links to the same page for each value of the `name` parameter, keeping the other parameters
    except the page number."""
    links = []
    for key, label in labels.items():
        query = params.copy()
        query[name] = key
        query.pop("page", None)
        links.append({"key": key, "label": label, "active": key == active, "query": query.urlencode()})
    return links


def window_tabs(params, active: str) -> list[dict]:
    return tabs(params, "period", WINDOW_LABELS, active)


def order_tabs(params, active: str) -> list[dict]:
    return tabs(params, "by", LEADERBOARD_ORDERS, active)


def group_tabs(params, active: str) -> list[dict]:
    return tabs(params, "group", LEADERBOARD_GROUPS, active)


def call_columns(rows: list["queries.FacadeRow"]) -> dict[str, bool]:
    """Which server-side tool columns the per-model table shows: each only when some row has a call,
    so the many pages whose models never search keep their narrow table."""
    return {"with_web_searches": any(row.totals.web_search_calls for row in rows),
            "with_file_searches": any(row.totals.file_search_calls for row in rows)}


def panel(window: "queries.Window", user_id: int | None = None, key_id: int | None = None,
          project_id: int | None = None, with_keys: bool = False) -> dict:
    """Cards, charts and the per-model table, network-wide, for one user, one API key or one project;
    `with_keys`, the per-key rows too ("key_rows", read in the same statement as the cards)."""
    page = queries.page_reads(window, user_id, key_id, project_id, with_keys=with_keys)
    summary, facades = page.summary, page.facades
    return {
        "key_rows": page.keys,
        "window": window,
        "summary": summary,
        "cards": cards(summary),
        "chart_data": chart_data(page.series),
        "facades": facades,
        **call_columns(facades),
        "complete_through": summary.complete_through,
    }


@dataclass(frozen=True)
class KeyListRow:
    """A row of a user's "API keys" table: the key (None for the reserved key, which holds the usage from
    before per-key accounting and is not a key anyone manages) and its usage in the window."""

    key_id: int
    prefix: str
    label: str
    key: object | None
    totals: "queries.Totals"


def user_key_rows(used_keys: list["queries.KeyRow"], user) -> list[KeyListRow]:
    """A user's keys, newest first, with their usage in the window (`used_keys`: by_key's rows of
    the user); then their reserved key, only when it has usage in the window."""
    used = {row.key_id: row for row in used_keys}
    rows = [KeyListRow(k.pk, k.prefix, k.name, k, used[k.pk].totals if k.pk in used else queries.Totals())
            for k in user.api_keys.select_related("project").order_by("-created_at", "-pk") if not is_reserved(k.digest, user.pk)]
    rows += [KeyListRow(r.key_id, r.prefix, r.label, None, r.totals) for r in used.values() if r.reserved]
    return rows


def project_members(project) -> list:
    """A project's members, owners first, then by username."""
    members = project.members.select_related("user")
    return sorted(members, key=lambda m: (m.role != "owner", m.user.get_username()))


def project_budgets(project_id: int, now) -> list["budgets.BudgetState"]:
    """A project's own active budgets, with their spend in the current period."""
    own = Budget.objects.filter(scope=Budget.Scope.PROJECT, project_id=project_id, is_active=True)
    return [budgets.state_of(budget, now) for budget in own.order_by("period", "pk")]


class LeaderboardRows:
    """The leaderboard as a sequence Paginator can page: one count, one query per page."""

    def __init__(self, window: "queries.Window", by: str, group: str = "user"):
        self.window, self.by, self.group = window, by, group

    def count(self) -> int:
        return queries.leaderboard_count(self.window, group=self.group)

    def __len__(self):
        return self.count()

    def __getitem__(self, rows: slice):
        return queries.leaderboard(self.window, by=self.by, limit=rows.stop - rows.start, offset=rows.start,
                                   group=self.group)


def leaderboard_page(window: "queries.Window", by: str, page_number, group: str = "user") -> "Paginator.page":
    paginator = Paginator(LeaderboardRows(window, by, group), LEADERBOARD_PAGE_SIZE)
    return paginator.get_page(page_number)


def rank_change(row: "queries.LeaderRow") -> str:
    if row.previous_rank is None:
        return "new"
    moved = row.previous_rank - row.rank
    return f"▲{moved}" if moved > 0 else f"▼{-moved}" if moved < 0 else "="


def page_links(params, page) -> list[dict]:
    """Numbered links around the current page (the admin's own paginator needs a ChangeList)."""
    links = []
    for number in page.paginator.get_elided_page_range(page.number, on_each_side=2, on_ends=1):
        if number == page.paginator.ELLIPSIS:
            links.append({"ellipsis": True})
            continue
        query = params.copy()
        query["page"] = number
        links.append({"number": number, "current": number == page.number, "query": query.urlencode()})
    return links


def degraded_events(window: "queries.Window") -> list[dict]:
    """What degraded mode did in the window (replays, losses, refusals), for the page's banner."""
    labels = dict(BufferEvent.Kind.choices)
    return [{"kind": kind, "label": labels.get(kind, kind), "count": count}
            for kind, count in BufferEvent.objects.totals(window.start, window.end).items()]
