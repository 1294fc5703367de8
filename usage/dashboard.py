"""What the usage pages show, built from the read module (usage.queries): KPI cards, the charts'
series, the per-model table and the leaderboard's page, so views stay thin
and tests can compare each shown number with the read module's.
"""

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from django.core.paginator import Paginator

from usage import queries
from usage.display import compact
from usage.models import BufferEvent
from usage.money import usd_for_people

DEFAULT_WINDOW = "7d"
WINDOW_LABELS = {"7d": "Last 7 days", "30d": "Last 30 days", "90d": "Last 90 days"}
LEADERBOARD_ORDERS = {"tokens": "Tokens", "spend": "Spend", "requests": "Requests"}
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


def panel(window: "queries.Window", user_id: int | None = None) -> dict:
    """Cards, charts and the per-model table, network-wide or for one user."""
    summary = queries.summary(window, user_id=user_id)
    return {
        "window": window,
        "summary": summary,
        "cards": cards(summary),
        "chart_data": chart_data(queries.daily_series(window, user_id=user_id)),
        "facades": queries.by_facade(window, user_id=user_id),
        "complete_through": summary.complete_through,
    }


class LeaderboardRows:
    """The leaderboard as a sequence Paginator can page: one count, one query per page."""

    def __init__(self, window: "queries.Window", by: str):
        self.window, self.by = window, by

    def count(self) -> int:
        return queries.leaderboard_count(self.window)

    def __len__(self):
        return self.count()

    def __getitem__(self, rows: slice):
        return queries.leaderboard(self.window, by=self.by, limit=rows.stop - rows.start, offset=rows.start)


def leaderboard_page(window: "queries.Window", by: str, page_number) -> "Paginator.page":
    paginator = Paginator(LeaderboardRows(window, by), LEADERBOARD_PAGE_SIZE)
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
