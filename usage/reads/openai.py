"""The OpenAI-shaped organization usage and costs, read (usage.web.openai_usage parses the request and
answers): given a validated Query, each bucket's results.

Every number is exact and read through usage.reads.engine, as every page's: the query's whole span in
one statement, summed per level bucket and per id (user, key, facade), each level bucket then
added to the local hour or day (TIME_ZONE) holding it, and the ids named in one more query (usernames,
key prefixes and their projects' public ids; the facades' names come joined in the statement). So
the buckets of a range add up to usage.reads.queries.totals_between over the same span.

Costs are the ledger's own nanodollars: a bucket's (or a group's) amount is the exact sum of the
`cost_nanos` recorded, each request's cost having been rounded once, half to even
(usage.pricing). Line items split that exact amount of one model (in one bucket and group) over its
billed quantities by the largest-remainder method, in proportion to each quantity's cost at the
facade's current base prices (tokens x price per token, calls x price per call, unrounded). So a
model's line items always add up, to the nanodollar, to the ledger (and to the ungrouped answer),
and with flat prices each stays within a nanodollar or so a request of quantity x price — the
requests' half-even roundings are shared out rather than lost. The split is an apportionment, not a
recomputation: if a price changed during the span, or the facade has long-context tiers or
service-tier variants (price_rules), the requests were billed at prices the bucket's sums no longer
tell apart, so the split follows today's base prices while the total stays the one recorded.
"""

from dataclasses import dataclass, field
from datetime import datetime

from django.contrib.auth import get_user_model

from usage.calendar import day_bounds, hour_start, next_hour, zone
from usage.money import nanos_to_usd
from usage.pricing import Prices
from usage.reads.engine import Totals, facade_model, key_model, project_model, sums
from usage.rollups import watermark


@dataclass(frozen=True)
class Endpoint:
    """One of the endpoints: what it groups by, filters on and counts."""

    name: str
    group_by: dict[str, str | None]  # OpenAI field -> dimension (DIMENSIONS; None: always null)
    filters: dict[str, str | None]  # OpenAI list parameter -> dimension (None: nothing matches)
    widths: dict[str, tuple[int, int]]  # bucket_width -> (default limit, max limit)
    kind: str | None = None  # facade kind counted (None: every facade)
    has_batch: bool = False
    calls: str | None = None  # the counter of a server-side tool's calls (search endpoints)
    null_fields: tuple[str, ...] = ()  # OpenAI's result fields CodeVector cannot fill, always null


# A dimension's bucket column: a project's usage is its keys' usage (no project column on the
# buckets), so rows are summed per key and named by the key's project.
DIMENSIONS = {"user": "user_id", "key": "key_id", "model": "facade_id", "project": "key_id", "facade_id": "facade_id"}
USAGE_WIDTHS = {"1d": (7, 31), "1h": (24, 168)}
GROUPS = {"user_id": "user", "api_key_id": "key", "model": "model", "project_id": "project"}
FILTERS = {"user_ids": "user", "api_key_ids": "key", "models": "model", "project_ids": "project"}
COMPLETIONS = Endpoint("completions", GROUPS, FILTERS, USAGE_WIDTHS, kind="chat", has_batch=True)
EMBEDDINGS = Endpoint("embeddings", GROUPS, FILTERS, USAGE_WIDTHS, kind="embeddings")
WEB_SEARCHES = Endpoint("web_search_calls", GROUPS, {**FILTERS, "context_levels": None}, USAGE_WIDTHS,
                        calls="web_search_calls", null_fields=("context_level", "api_source"))
FILE_SEARCHES = Endpoint("file_search_calls", GROUPS, {**FILTERS, "vector_store_ids": None}, USAGE_WIDTHS,
                         calls="file_search_calls", null_fields=("vector_store_id",))
COSTS = Endpoint("costs", {"user_id": "user", "api_key_id": "key", "line_item": None, "project_id": "project"},
                 {"api_key_ids": "key", "project_ids": "project", "line_items": None}, {"1d": (7, 180)})


@dataclass
class Query:
    """A request's parameters, validated: its buckets (whole local hours or days), its grouping
    (OpenAI fields) and its filters (dimension -> the names kept)."""

    endpoint: Endpoint
    width: str
    buckets: list[tuple[datetime, datetime]]
    has_more: bool
    next_page: str | None
    group_by: list[str]
    filters: dict[str, list[str]] = field(default_factory=dict)
    matches_nothing: bool = False
    line_items: set[str] | None = None

    def dimensions(self) -> tuple[str, ...]:
        """The grouped fields' dimensions, in the order asked (those always null left out)."""
        return tuple(self.endpoint.group_by[g] for g in self.group_by if self.endpoint.group_by[g])


def bucket_holding(moment: datetime, width: str) -> datetime:
    return hour_start(moment, zone()) if width == "1h" else day_bounds(moment, zone())[0]


def bucket_after(start: datetime, width: str) -> datetime:
    return next_hour(start, zone()) if width == "1h" else day_bounds(start, zone())[1]


# --- reading the ledger -----------------------------------------------------------------------------


def _scope(query: Query) -> dict | None:
    """The filters as ids for the engine (usage.sql.segment_filters); None: no row can match."""
    names = query.filters
    found = {}
    if "user" in names:
        found["user_ids"] = get_user_model().objects.filter(username__in=names["user"]).values_list("pk", flat=True)
    if "key" in names:
        found["key_ids"] = key_model().objects.filter(prefix__in=names["key"]).values_list("pk", flat=True)
    if "project" in names:
        found["project_ids"] = project_model().objects.filter(public_id__in=names["project"]).values_list("pk",
                                                                                                          flat=True)
    if "model" in names or query.endpoint.kind:
        facades = facade_model().objects.all()
        if "model" in names:
            facades = facades.filter(name__in=names["model"])
        if query.endpoint.kind:
            facades = facades.filter(kind=query.endpoint.kind)
        found["facade_ids"] = facades.values_list("pk", flat=True)
    scope = {name: set(ids) for name, ids in found.items()}
    return None if any(not ids for ids in scope.values()) else scope


def _namers(rows: list[dict], dimensions: tuple[str, ...]) -> dict:
    """Dimension -> (row -> the group's value): usernames and key prefixes or projects' public ids
    read once for the ids in `rows`."""
    namers = {"model": lambda row: row["facade_name"], "facade_id": lambda row: row["facade_id"]}
    if "user" in dimensions:
        users = dict(get_user_model().objects.filter(pk__in={r["user_id"] for r in rows}).values_list("pk", "username"))
        namers["user"] = lambda row: users[row["user_id"]]
    if "key" in dimensions:
        keys = {pk: (prefix, project) for pk, prefix, project in key_model().objects.filter(
            pk__in={r["key_id"] for r in rows}).values_list("pk", "prefix", "project__public_id")}
        namers["key"] = lambda row: keys[row["key_id"]][0]
        namers["project"] = lambda row: keys[row["key_id"]][1]
    elif "project" in dimensions:  # summed per project by the database (_per_project)
        projects = dict(project_model().objects.filter(pk__in={r["project_id"] for r in rows})
                        .values_list("pk", "public_id"))
        namers["project"] = lambda row: projects[row["project_id"]]
    return namers


def _per_project(dimensions: tuple[str, ...]) -> bool:
    """Grouped by project but not by key: the keys' rows are summed per project in the statement."""
    return "project" in dimensions and "key" not in dimensions


def read(query: Query, dimensions: tuple[str, ...]) -> dict[tuple, Totals]:
    """Counter sums per (bucket start, *the dimensions' values) over the query's buckets."""
    scope = None if query.matches_nothing or not query.buckets else _scope(query)
    if scope is None:
        return {}
    columns = tuple(dict.fromkeys(DIMENSIONS[d] for d in dimensions))
    coarsest = "hour" if query.width == "1h" else "day"
    rows = sums([(query.buckets[0][0], query.buckets[-1][1])], ("bucket_start", *columns), watermark(), coarsest,
                facade_names="model" in dimensions, keys_to_projects=_per_project(dimensions), **scope)
    namers = _namers(rows, dimensions)
    out: dict[tuple, Totals] = {}
    for row in rows:
        key = (bucket_holding(row["bucket_start"], query.width), *(namers[d](row) for d in dimensions))
        out[key] = out.get(key, Totals()) + Totals.of(row)
    return out


def _sort_key(key: tuple) -> tuple:
    return tuple("" if v is None else str(v) for v in key[1:])


def group_fields_of(query: Query, values: tuple) -> dict:
    """The result's group fields: the grouped ones' values, null for the rest (as OpenAI)."""
    grouped = dict(zip(query.dimensions(), values))
    return {name: grouped.get(dimension) if name in query.group_by and dimension else None
            for name, dimension in query.endpoint.group_by.items() if name != "line_item"}


def usage_results(query: Query) -> dict[datetime, list[dict]]:
    """Each bucket's results (by bucket start): completions or embeddings, or tool calls."""
    if query.endpoint.calls:
        return search_results(query)
    sums_per = read(query, query.dimensions())
    per_bucket: dict[datetime, list] = {}
    for key in sorted(sums_per, key=_sort_key):
        per_bucket.setdefault(key[0], []).append(usage_result(query, key[1:], sums_per[key]))
    return per_bucket


def usage_result(query: Query, values: tuple, t: Totals) -> dict:
    if query.endpoint is EMBEDDINGS:
        return {"object": "organization.usage.embeddings.result", "input_tokens": t.input_tokens,
                "num_model_requests": t.requests, **group_fields_of(query, values)}
    return {
        "object": "organization.usage.completions.result",
        "input_tokens": t.input_tokens,  # every prompt token, cached reads and cache writes included
        "input_cached_tokens": t.cached_input_tokens,
        "input_cache_write_tokens": t.cache_write_tokens,
        "input_uncached_tokens": t.input_tokens - t.cached_input_tokens - t.cache_write_tokens,
        "output_tokens": t.output_tokens,
        "num_model_requests": t.requests,
        **group_fields_of(query, values),
        "batch": None, "service_tier": None, "api_source": None,
    }


SEARCH_OBJECTS = {"web_search_calls": "organization.usage.web_searches.result",
                  "file_search_calls": "organization.usage.file_searches.result"}


def search_results(query: Query) -> dict[datetime, list[dict]]:
    """Tool calls per bucket and group, only where there were some; read per model too, so that a
    web search result's `num_model_requests` counts the requests of the models that searched
    (usage.web.openai_usage)."""
    endpoint = query.endpoint
    sums_per = read(query, query.dimensions() + ("facade_id",))
    calls: dict[tuple, list[int]] = {}  # (bucket start, *group values) -> [calls, model requests]
    for key, totals in sums_per.items():
        n = getattr(totals, endpoint.calls)
        if n:
            counts = calls.setdefault(key[:-1], [0, 0])
            counts[0] += n
            counts[1] += totals.requests
    per_bucket: dict[datetime, list] = {}
    for key in sorted(calls, key=_sort_key):
        n, model_requests = calls[key]
        result = {"object": SEARCH_OBJECTS[endpoint.calls], "num_requests": n}
        if endpoint is WEB_SEARCHES:
            result["num_model_requests"] = model_requests
        result.update(group_fields_of(query, key[1:]))
        result.update(dict.fromkeys(endpoint.null_fields))
        per_bucket.setdefault(key[0], []).append(result)
    return per_bucket


# --- costs ------------------------------------------------------------------------------------------

# A model's billed quantities, (name, unit), in the order line_items() returns them (the answer sorts by name).
LINE_ITEMS = (("input_tokens", "tokens"), ("cached_input_tokens", "tokens"), ("cache_write_tokens", "tokens"),
              ("cache_write_extended_tokens", "tokens"), ("output_tokens", "tokens"),
              ("web_search_calls", "calls"), ("file_search_calls", "calls"))


def apportion(total: int, weights: list[int]) -> list[int]:
    """`total` split in integers proportionally to `weights` (largest remainder; ties to the first).
    The parts add up to `total` exactly."""
    whole = sum(weights)
    if whole == 0:
        return [total] + [0] * (len(weights) - 1)
    parts = [total * w // whole for w in weights]
    remainders = [total * w % whole for w in weights]
    for i in sorted(range(len(weights)), key=lambda i: (-remainders[i], i))[: total - sum(parts)]:
        parts[i] += 1
    return parts


def line_items(t: Totals, prices: Prices) -> list[tuple[str, int, int, str]]:
    """(quantity name, quantity, nanodollars, unit) of one model's exact recorded cost (module docstring)."""
    quantities = [t.input_tokens - t.cached_input_tokens - t.cache_write_tokens, t.cached_input_tokens,
                  t.cache_write_tokens - t.cache_write_extended_tokens, t.cache_write_extended_tokens,
                  t.output_tokens, t.web_search_calls, t.file_search_calls]
    # Weights in milli-nanodollars at today's base prices: micro-USD per million tokens is a
    # milli-nanodollar a token, micro-USD per 1,000 calls a nanodollar a call. Only the base prices:
    # a bucket's sums cannot say which requests a long-context tier or a service-tier variant billed,
    # so its recorded total is apportioned by these weights, never recomputed.
    p = prices.base
    weights = [quantities[0] * p.input_micros, quantities[1] * p.cached_input_micros,
               quantities[2] * p.cache_write_micros, quantities[3] * p.cache_write_extended_micros,
               quantities[4] * p.output_micros, quantities[5] * p.web_search_micros * 1000,
               quantities[6] * p.file_search_micros * 1000]
    if sum(weights) == 0:  # free today, but not when recorded: share by quantity
        weights = [max(q, 0) for q in quantities]
    nanos = apportion(t.cost_nanos, weights)
    return [(name, q, n, unit) for (name, unit), q, n in zip(LINE_ITEMS, quantities, nanos) if q or n]


def amount(nanos: int) -> dict:
    return {"value": nanos_to_usd(nanos), "currency": "usd"}


def cost_results(query: Query) -> dict[datetime, list[dict]]:
    """Costs per bucket (and group): the ledger's exact nanodollars; per line item, or restricted to
    some line items, each model's exact amount split over its billed quantities (module docstring)."""
    dimensions = query.dimensions()
    by_line = "line_item" in query.group_by
    per_model = by_line or query.line_items is not None
    sums_per = read(query, dimensions + (("facade_id", "model") if per_model else ()))
    rows: dict[tuple, dict] = {}  # (bucket start, *group values, line item or None) -> result
    prices: dict[int, Prices] = {}
    if per_model:
        prices = {f.pk: f.prices for f in facade_model().objects.filter(pk__in={k[-2] for k in sums_per})}
    for key, totals in sums_per.items():
        group = key[: 1 + len(dimensions)]
        items = [(None, None, totals.cost_nanos, None)]
        if per_model:
            items = [(f"{key[-1]}, {quantity_name}", quantity, nanos, unit)
                     for quantity_name, quantity, nanos, unit in line_items(totals, prices.get(key[-2], Prices()))]
            items = [item for item in items if query.line_items is None or item[0] in query.line_items]
        for name, quantity, nanos, unit in items:
            row_key = (*group, name if by_line else None)
            row = rows.get(row_key)
            if row is None:
                row = rows[row_key] = {
                    "object": "organization.costs.result", "nanos": 0,
                    "line_item": name if by_line else None, "quantity": quantity if by_line else None,
                    "quantity_unit": unit if by_line else None,
                    **group_fields_of(query, key[1:]), "api_source": None}
            row["nanos"] += nanos
    results: dict[datetime, list] = {}
    for row_key in sorted(rows, key=_sort_key):
        row = rows[row_key]
        results.setdefault(row_key[0], []).append({"object": row.pop("object"), "amount": amount(row.pop("nanos")),
                                                   **row})
    return results
