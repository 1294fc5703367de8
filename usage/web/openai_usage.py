"""OpenAI-compatible organization usage and costs (GET /v1/organization/usage/completions,
/usage/embeddings, /usage/web_search_calls, /usage/file_search_calls and /costs), read from the
ledger by Django.

The shapes, parameters and errors are those of OpenAI's Usage and Costs APIs, so the official SDKs
(`client.admin.organization.usage.completions(...)`, `.embeddings(...)`, `.web_search_calls(...)`,
`.file_search_calls(...)`, `.costs(...)`) and the dashboards built on them work against CodeVector
unchanged but for the base URL and the key:

- Authentication as OpenAI's admin keys: `Authorization: Bearer <CodeVector API key>` of a user who
  sees everyone's usage (usage.web.permissions.sees_everyone); any other key is refused with 403, a
  missing or unknown key with 401, in OpenAI's error format.
- `user_id` is the username, `api_key_id` the key's prefix, `model` the facade's public name,
  `project_id` the public id of the key's project (`proj_…`; the Default project is `proj_default`):
  a project's usage is its keys' usage, each key fixed to one project when it was created, so
  grouping or filtering by project is exact at every level. `project_ids` names existing projects
  (an unknown id is refused with 400, param `project_ids`, rather than answered with zeros; an
  inactive project's usage is still read). CodeVector has no batches, service tiers or API sources:
  those fields are null, and `batch=true` matches nothing.
- Completions count chat facades, embeddings count embeddings facades (ModelFacade.kind); costs
  count both.
- Web and file searches (`num_requests`: the server-side tool calls the upstream billed) are
  grouped by `user_id`, `api_key_id`, `model` (for file searches a CodeVector extension: OpenAI
  groups them by vector store) and `project_id`. CodeVector does not know a search's context level
  or vector store: those fields are null, grouping by them is refused and filtering on them matches
  nothing. It counts searches per model, not per request, so a web search result's
  `num_model_requests` is every request, in that bucket and group, to the models that made web
  searches in it: the requests among which the searches were made, not only those that searched.
- Buckets are whole local hours or days of the gateway's TIME_ZONE (DST-exact, as every other usage
  read): `start_time` is moved back to the start of the bucket holding it, and the last bucket is
  the one holding `end_time` (exclusive; default now). Each bucket's `start_time`/`end_time` say
  what it covers. The finest grain is the ledger's 5 minutes, so `bucket_width=1m` is refused.
- Every number is exact: each bucket is read with usage.reads.queries.grouped_rows over its whole span
  (day rows, hour rows and 5-minute rows as rolled), so the buckets of a range add up to
  usage.reads.queries.totals_between over the same span.

Costs are the ledger's own nanodollars: a bucket's (or a group's) amount is the exact sum of the
`cost_nanos` recorded, each request's cost having been rounded once, half to even
(usage.pricing). Line items (`group_by=line_item`: "<model>, input_tokens", "<model>,
cached_input_tokens", "<model>, cache_write_tokens", "<model>, cache_write_extended_tokens",
"<model>, output_tokens", "<model>, web_search_calls", "<model>, file_search_calls") split that
exact amount of one model (in one bucket and group) over its billed quantities by the
largest-remainder method, in proportion to each quantity's cost at the facade's current base
prices (tokens x price per token, calls x price per call, unrounded). So a model's line items
always add up, to the nanodollar, to the ledger (and to the ungrouped answer), and with flat prices
each stays within a nanodollar or so a request of quantity x price — the requests' half-even
roundings are shared out rather than lost. The split is an apportionment, not a recomputation: if a
price changed during the span, or the facade has long-context tiers or service-tier variants
(price_rules), the requests were billed at prices the bucket's sums no longer tell apart, so the
split follows today's base prices while the total stays the one recorded. `input_tokens` there are
the prompt tokens billed at the input price (neither cached reads nor cache writes),
`cache_write_tokens` the writes of the default retention and `cache_write_extended_tokens` those
of the longer one (Anthropic 1 hour, OpenAI 12 hours); the quantities of a model's token line
items add up to its prompt plus output tokens. Token items have `quantity_unit` "tokens", search
items "calls".

Amounts are emitted as JSON numbers written from the Decimal (9 digits after the point), never
through a float.
"""

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.urls import path
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions
from rest_framework.authentication import SessionAuthentication
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.permissions import BasePermission
from rest_framework.renderers import BaseRenderer
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.throttling import UserRateThrottle
from rest_framework.views import APIView, exception_handler

from usage.reads import queries
from usage.calendar import day_bounds, hour_start, next_hour, zone
from usage.models import FiveMinuteUsage
from usage.money import nanos_to_usd
from usage.web.permissions import project_model, sees_everyone
from usage.pricing import Prices
from usage.rollups import watermark

FINEST_GRAIN = "CodeVector's finest grain is 5 minutes (its ledger's buckets): use bucket_width 1h or 1d."
LATEST_TIMESTAMP = 253_402_214_400  # 9999-12-31: beyond, no calendar arithmetic
CURSOR_PREFIX = "cvpage_"

# --- errors, in OpenAI's format ------------------------------------------------------------------


class OpenAIError(exceptions.APIException):
    """An error answered as OpenAI does: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = "invalid_value",
                 status: int = 400):
        super().__init__(message)
        self.status_code, self.param, self.openai_code = status, param, code


DRF_ERRORS = {  # status -> (type, code) for the errors DRF raises itself
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "insufficient_permissions"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}
MISSING_KEY = ("Missing API key: send the API key of a CodeVector user who sees everyone's usage as "
               "'Authorization: Bearer cvk_...'.")


def _message(detail) -> str:
    if isinstance(detail, dict):
        return " ".join(f"{k}: {_message(v)}" for k, v in detail.items())
    if isinstance(detail, list):
        return " ".join(_message(v) for v in detail)
    return str(detail)


def openai_exception_handler(exc, context):
    response = exception_handler(exc, context)
    if response is None:
        return None  # a server error: Django's 500
    if isinstance(exc, OpenAIError):
        error = {"message": str(exc.detail), "type": "invalid_request_error", "param": exc.param,
                 "code": exc.openai_code}
    else:
        kind, code = DRF_ERRORS.get(response.status_code, ("invalid_request_error", None))
        message = MISSING_KEY if isinstance(exc, exceptions.NotAuthenticated) else _message(exc.detail)
        if isinstance(exc, exceptions.NotAuthenticated):
            code = "missing_api_key"
        error = {"message": message, "type": kind, "param": None, "code": code}
    response.data = {"error": error}
    return response


# --- rendering: JSON whose Decimals are numbers written exactly -----------------------------------

_DECIMAL = re.compile(r'"\\u0000(-?[0-9]+(?:\.[0-9]+)?)\\u0000"')


def _mark_decimals(value):
    if isinstance(value, Decimal):
        return f"\x00{value:f}\x00"
    if isinstance(value, dict):
        return {k: _mark_decimals(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mark_decimals(v) for v in value]
    return value


def exact_json(data) -> str:
    """JSON with each Decimal written as a number, digit for digit (json would need a float)."""
    return _DECIMAL.sub(r"\1", json.dumps(_mark_decimals(data), separators=(",", ":")))


class ExactJSONRenderer(BaseRenderer):
    media_type = "application/json"
    format = "json"
    charset = None

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return b"" if data is None else exact_json(data).encode()


class JSONOnly(BaseContentNegotiation):
    """Always JSON, whatever the Accept header says (as OpenAI's API)."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


# --- authentication and permission ----------------------------------------------------------------


class SeesEveryoneByKey(BasePermission):
    message = ("This API key may not read the organization's usage: it needs the key of a superuser, or of "
               "staff with the usage.view_usage_dashboard permission.")

    def has_permission(self, request, view):
        return bool(request.user and request.user.is_authenticated and request.auth is not None
                    and sees_everyone(request.user))


class OrganizationThrottle(UserRateThrottle):
    scope = "usage"  # the usage API's rate (API_THROTTLE_RATE), shared with it


# --- parameters -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """One of the three endpoints: what it groups by, filters on and counts."""

    name: str
    group_by: dict[str, str | None]  # OpenAI field -> ORM name (None: always null)
    filters: dict[str, str | None]  # OpenAI list parameter -> ORM lookup (None: nothing matches)
    widths: dict[str, tuple[int, int]]  # bucket_width -> (default limit, max limit)
    kind: str | None = None  # facade kind counted (None: every facade)
    has_batch: bool = False
    calls: str | None = None  # the counter of a server-side tool's calls (search endpoints)
    null_fields: tuple[str, ...] = ()  # OpenAI's result fields CodeVector cannot fill, always null


USAGE_WIDTHS = {"1d": (7, 31), "1h": (24, 168)}
PROJECT = "key__project__public_id"  # a project's usage is its keys' usage (no project column on the buckets)
GROUPS = {"user_id": "user__username", "api_key_id": "key__prefix", "model": "facade__name", "project_id": PROJECT}
FILTERS = {"user_ids": "user__username__in", "api_key_ids": "key__prefix__in", "models": "facade__name__in",
           "project_ids": PROJECT + "__in"}
COMPLETIONS = Endpoint("completions", GROUPS, FILTERS, USAGE_WIDTHS, kind="chat", has_batch=True)
EMBEDDINGS = Endpoint("embeddings", GROUPS, FILTERS, USAGE_WIDTHS, kind="embeddings")
WEB_SEARCHES = Endpoint("web_search_calls", GROUPS, {**FILTERS, "context_levels": None}, USAGE_WIDTHS,
                        calls="web_search_calls", null_fields=("context_level", "api_source"))
FILE_SEARCHES = Endpoint("file_search_calls", GROUPS, {**FILTERS, "vector_store_ids": None}, USAGE_WIDTHS,
                         calls="file_search_calls", null_fields=("vector_store_id",))
COSTS = Endpoint("costs", {"user_id": "user__username", "api_key_id": "key__prefix", "line_item": None,
                           "project_id": PROJECT},
                 {"api_key_ids": "key__prefix__in", "project_ids": PROJECT + "__in", "line_items": None},
                 {"1d": (7, 180)})


def list_param(request, name: str) -> list[str]:
    """A list parameter, as `name[]=a&name[]=b` (the SDKs) or `name=a&name=b`."""
    return request.query_params.getlist(f"{name}[]") + request.query_params.getlist(name)


def int_param(request, name: str, *, required: bool = False, minimum: int | None = None,
              maximum: int | None = None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        if required:
            raise OpenAIError(f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")
        return None
    try:
        value = int(raw)
    except ValueError:
        raise OpenAIError(f"Invalid '{name}': expected an integer, got {raw!r}.", param=name,
                          code="invalid_type") from None
    if minimum is not None and value < minimum or maximum is not None and value > maximum:
        bounds = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise OpenAIError(f"Invalid '{name}': {value} is out of range; it must be {bounds}.", param=name)
    return value


def check_projects(public_ids: list[str]) -> None:
    """Refuse project ids that name no project: a mistyped id would otherwise read as a project
    without usage."""
    known = set(project_model().objects.filter(public_id__in=public_ids).values_list("public_id", flat=True))
    unknown = [p for p in dict.fromkeys(public_ids) if p not in known]
    if unknown:
        names = ", ".join(repr(p) for p in unknown)
        raise OpenAIError(f"Invalid 'project_ids': no project has the id {names}. Project ids look like "
                          "'proj_…' ('proj_default' for the Default project); `manage.py create_project` prints "
                          "them and the admin's project list shows them.", param="project_ids")


def instant(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def bucket_holding(moment: datetime, width: str) -> datetime:
    return hour_start(moment, zone()) if width == "1h" else day_bounds(moment, zone())[0]


def bucket_after(start: datetime, width: str) -> datetime:
    return next_hour(start, zone()) if width == "1h" else day_bounds(start, zone())[1]


def encode_cursor(start: datetime) -> str:
    return CURSOR_PREFIX + base64.urlsafe_b64encode(f"t={int(start.timestamp())}".encode()).decode().rstrip("=")


def decode_cursor(raw: str) -> datetime:
    invalid = OpenAIError("Invalid 'page': pass the next_page of the previous answer, with the same parameters.",
                          param="page")
    if not raw.startswith(CURSOR_PREFIX):
        raise invalid
    body = raw[len(CURSOR_PREFIX):]
    try:
        text = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise invalid from None
    if not re.fullmatch(r"t=[0-9]{1,12}", text) or int(text[2:]) > LATEST_TIMESTAMP:
        raise invalid
    return instant(int(text[2:]))


@dataclass
class Query:
    """A request's parameters, validated."""

    width: str
    buckets: list[tuple[datetime, datetime]]
    has_more: bool
    next_page: str | None
    group_by: list[str]
    filters: dict = field(default_factory=dict)
    matches_nothing: bool = False
    line_items: set[str] | None = None


def parse(request, endpoint: Endpoint) -> Query:
    width = request.query_params.get("bucket_width") or "1d"
    if width not in endpoint.widths:
        if width == "1m" and endpoint is not COSTS:
            raise OpenAIError(f"Invalid 'bucket_width': 1m. {FINEST_GRAIN}", param="bucket_width")
        raise OpenAIError(f"Invalid 'bucket_width': {width!r}; use {' or '.join(endpoint.widths)}.",
                          param="bucket_width")
    default_limit, max_limit = endpoint.widths[width]
    start_s = int_param(request, "start_time", required=True, minimum=0, maximum=LATEST_TIMESTAMP)
    end_s = int_param(request, "end_time", minimum=0, maximum=LATEST_TIMESTAMP)
    limit = int_param(request, "limit", minimum=1, maximum=max_limit) or default_limit
    if end_s is not None and end_s <= start_s:
        raise OpenAIError("Invalid 'end_time': it must be after start_time.", param="end_time")
    now = timezone.now()
    range_end = instant(end_s) if end_s is not None else max(now, instant(start_s) + timedelta(seconds=1))
    first = bucket_holding(instant(start_s), width)
    if width == "1h":
        # Hour rows are pruned after USAGE_HOUR_RETENTION_DAYS (their days are kept): refuse rather than
        # answer zeros.
        kept_since = now - timedelta(days=settings.USAGE_HOUR_RETENTION_DAYS)
        if first < kept_since:
            raise OpenAIError(f"Invalid 'start_time': hourly usage is kept for {settings.USAGE_HOUR_RETENTION_DAYS} "
                              "days (USAGE_HOUR_RETENTION_DAYS); use bucket_width 1d for older usage.",
                              param="start_time")

    page = request.query_params.get("page")
    start = first
    if page:
        start = decode_cursor(page)
        if start < first or bucket_holding(start, width) != start:
            raise OpenAIError("Invalid 'page': it does not belong to this query (pass the same parameters "
                              "with the previous answer's next_page).", param="page")
    buckets = []
    while start < range_end and len(buckets) < limit:
        end = bucket_after(start, width)
        buckets.append((start, end))
        start = end
    has_more = start < range_end
    next_page = encode_cursor(start) if has_more else None

    group_by = []
    for name in list_param(request, "group_by"):
        if name not in endpoint.group_by:
            raise OpenAIError(f"Invalid 'group_by': {name!r}; CodeVector groups {endpoint.name} by "
                              f"{', '.join(endpoint.group_by)}.", param="group_by")
        if name not in group_by:
            group_by.append(name)

    query = Query(width, buckets, has_more, next_page, group_by)
    if endpoint.kind:
        query.filters["facade__kind"] = endpoint.kind
    for name, lookup in endpoint.filters.items():
        values = list_param(request, name)
        if not values:
            continue
        if name == "line_items":
            query.line_items = set(values)
        elif lookup is None:  # context levels, vector stores: CodeVector knows none
            query.matches_nothing = True
        else:
            if name == "project_ids":
                check_projects(values)
            query.filters[lookup] = values
    if endpoint.has_batch:
        batch = (request.query_params.get("batch") or "").lower()
        if batch not in ("", "true", "false"):
            raise OpenAIError(f"Invalid 'batch': expected true or false, got {batch!r}.", param="batch",
                              code="invalid_type")
        query.matches_nothing |= batch == "true"  # no batch jobs go through the gateway
    return query


# --- reading the ledger -----------------------------------------------------------------------------


def read(query: Query, group_fields: tuple[str, ...]) -> dict[tuple, queries.Totals]:
    """Counter sums per (bucket start, *group_fields values) over the query's buckets."""
    if query.matches_nothing or not query.buckets:
        return {}
    coarsest = "hour" if query.width == "1h" else "day"
    rows = queries.grouped_rows(query.buckets[0][0], query.buckets[-1][1], ("bucket_start", *group_fields),
                                watermark(), coarsest, **query.filters)
    sums: dict[tuple, queries.Totals] = {}
    for row in rows:
        key = (bucket_holding(row["bucket_start"], query.width), *(row[f] for f in group_fields))
        sums[key] = sums.get(key, queries.Totals()) + queries.Totals.of(row)
    return sums


def _sort_key(key: tuple) -> tuple:
    return tuple("" if v is None else str(v) for v in key[1:])


def page(query: Query, results_of) -> dict:
    """The OpenAI page: one bucket per span, its results from `results_of(bucket start)`."""
    return {
        "object": "page",
        "data": [{"object": "bucket", "start_time": int(start.timestamp()), "end_time": int(end.timestamp()),
                  "results": results_of(start)} for start, end in query.buckets],
        "has_more": query.has_more,
        "next_page": query.next_page,
    }


def usage_page(query: Query, endpoint: Endpoint) -> dict:
    if endpoint.calls:
        return searches_page(query, endpoint)
    fields = tuple(endpoint.group_by[g] for g in query.group_by if endpoint.group_by[g])
    sums = read(query, fields)
    per_bucket: dict[datetime, list] = {}
    for key in sorted(sums, key=_sort_key):
        per_bucket.setdefault(key[0], []).append(usage_result(endpoint, query, dict(zip(fields, key[1:])), sums[key]))
    return page(query, lambda start: per_bucket.get(start, []))


def group_fields_of(endpoint: Endpoint, query: Query, values: dict) -> dict:
    """The result's group fields: the grouped ones' values, null for the rest (as OpenAI)."""
    return {name: values.get(endpoint.group_by[name]) if name in query.group_by and endpoint.group_by[name] else None
            for name in endpoint.group_by if name != "line_item"}


def usage_result(endpoint: Endpoint, query: Query, values: dict, t: queries.Totals) -> dict:
    if endpoint is EMBEDDINGS:
        return {"object": "organization.usage.embeddings.result", "input_tokens": t.input_tokens,
                "num_model_requests": t.requests, **group_fields_of(endpoint, query, values)}
    return {
        "object": "organization.usage.completions.result",
        "input_tokens": t.input_tokens,  # every prompt token, cached reads and cache writes included
        "input_cached_tokens": t.cached_input_tokens,
        "input_cache_write_tokens": t.cache_write_tokens,
        "input_uncached_tokens": t.input_tokens - t.cached_input_tokens - t.cache_write_tokens,
        "output_tokens": t.output_tokens,
        "num_model_requests": t.requests,
        **group_fields_of(endpoint, query, values),
        "batch": None, "service_tier": None, "api_source": None,
    }


SEARCH_OBJECTS = {"web_search_calls": "organization.usage.web_searches.result",
                  "file_search_calls": "organization.usage.file_searches.result"}


def searches_page(query: Query, endpoint: Endpoint) -> dict:
    """Tool calls per bucket and group, only where there were some; read per model too, so that a
    web search result's `num_model_requests` counts the requests of the models that searched
    (module docstring)."""
    fields = tuple(endpoint.group_by[g] for g in query.group_by if endpoint.group_by[g])
    sums = read(query, fields + ("facade_id",))
    calls: dict[tuple, list[int]] = {}  # (bucket start, *group values) -> [calls, model requests]
    for key, totals in sums.items():
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
        result.update(group_fields_of(endpoint, query, dict(zip(fields, key[1:]))))
        result.update(dict.fromkeys(endpoint.null_fields))
        per_bucket.setdefault(key[0], []).append(result)
    return page(query, lambda start: per_bucket.get(start, []))


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


def line_items(t: queries.Totals, prices: Prices) -> list[tuple[str, int, int, str]]:
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


def costs_page(query: Query) -> dict:
    """Costs per bucket (and group): the ledger's exact nanodollars; per line item, or restricted to
    some line items, each model's exact amount split over its token classes (module docstring)."""
    fields = tuple(COSTS.group_by[g] for g in query.group_by if COSTS.group_by[g])
    by_line = "line_item" in query.group_by
    per_model = by_line or query.line_items is not None
    sums = read(query, fields + (("facade_id", "facade__name") if per_model else ()))
    rows: dict[tuple, dict] = {}  # (bucket start, *group values, line item or None) -> result
    prices: dict[int, Prices] = {}
    if per_model:
        facade_model = FiveMinuteUsage._meta.get_field("facade").related_model  # usage never imports gateway
        prices = {f.pk: f.prices for f in facade_model.objects.filter(pk__in={k[-2] for k in sums})}
    for key, totals in sums.items():
        group = key[: 1 + len(fields)]
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
                    **group_fields_of(COSTS, query, dict(zip(fields, key[1:]))), "api_source": None}
            row["nanos"] += nanos
    results: dict[datetime, list] = {}
    for row_key in sorted(rows, key=_sort_key):
        row = rows[row_key]
        results.setdefault(row_key[0], []).append({"object": row.pop("object"), "amount": amount(row.pop("nanos")),
                                                   **row})
    return page(query, lambda start: results.get(start, []))


# --- views ------------------------------------------------------------------------------------------


@extend_schema(exclude=True)  # OpenAI documents these; the CodeVector schema describes its own API
class OrganizationView(APIView):
    endpoint: Endpoint
    permission_classes = [SeesEveryoneByKey]
    throttle_classes = [OrganizationThrottle]
    renderer_classes = [ExactJSONRenderer]
    content_negotiation_class = JSONOnly

    def get_authenticators(self):
        """The API-key authentication of the rest of the API, without sessions: an admin key, as OpenAI's."""
        return [auth() for auth in api_settings.DEFAULT_AUTHENTICATION_CLASSES
                if not issubclass(auth, SessionAuthentication)]

    def get_exception_handler(self):
        return openai_exception_handler

    def get(self, request):
        query = parse(request, self.endpoint)
        return Response(costs_page(query) if self.endpoint is COSTS else usage_page(query, self.endpoint))


class CompletionsUsage(OrganizationView):
    endpoint = COMPLETIONS


class EmbeddingsUsage(OrganizationView):
    endpoint = EMBEDDINGS


class WebSearchCalls(OrganizationView):
    endpoint = WEB_SEARCHES


class FileSearchCalls(OrganizationView):
    endpoint = FILE_SEARCHES


class Costs(OrganizationView):
    endpoint = COSTS


urlpatterns = [
    path("usage/completions", CompletionsUsage.as_view(), name="openai-usage-completions"),
    path("usage/embeddings", EmbeddingsUsage.as_view(), name="openai-usage-embeddings"),
    path("usage/web_search_calls", WebSearchCalls.as_view(), name="openai-usage-web-search-calls"),
    path("usage/file_search_calls", FileSearchCalls.as_view(), name="openai-usage-file-search-calls"),
    path("costs", Costs.as_view(), name="openai-costs"),
]
