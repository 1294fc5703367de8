"""The OpenAI-shaped usage and costs API's parameters (usage.web.openai_usage), validated into a
usage.reads.openai.Query, or refused in OpenAI's format: bucket width, start and end times, limit,
the page cursor, group_by and the list filters."""

import base64
import binascii
import re
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.utils import timezone

from usage.reads.openai import COSTS, Endpoint, Query, bucket_after, bucket_holding
from usage.web.openai_errors import OpenAIError
from usage.web.permissions import project_model

FINEST_GRAIN = "CodeVector's finest grain is 5 minutes (its ledger's buckets): use bucket_width 1h or 1d."
LATEST_TIMESTAMP = 253_402_214_400  # 9999-12-31: beyond, no calendar arithmetic
CURSOR_PREFIX = "cvpage_"


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

    query = Query(endpoint, width, buckets, has_more, next_page, group_by)
    for name, dimension in endpoint.filters.items():
        values = list_param(request, name)
        if not values:
            continue
        if name == "line_items":
            query.line_items = set(values)
        elif dimension is None:  # context levels, vector stores: CodeVector knows none
            query.matches_nothing = True
        else:
            if name == "project_ids":
                check_projects(values)
            query.filters[dimension] = values
    if endpoint.has_batch:
        batch = (request.query_params.get("batch") or "").lower()
        if batch not in ("", "true", "false"):
            raise OpenAIError(f"Invalid 'batch': expected true or false, got {batch!r}.", param="batch",
                              code="invalid_type")
        query.matches_nothing |= batch == "true"  # no batch jobs go through the gateway
    return query
