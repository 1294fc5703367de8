"""The usage API (Django REST framework): the numbers of the usage pages, as JSON or CSV.

Staff with usage.view_usage_dashboard (and superusers) see everyone, by session or by their own
API key; anyone else sees only themself. Money is a decimal string with 9 digits after the
point; times are ISO 8601 with offset.
"""

import csv
import io
from decimal import Decimal

from django.contrib.auth import get_user_model
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import BaseRenderer, BrowsableAPIRenderer, JSONRenderer
from rest_framework.response import Response
from rest_framework.throttling import UserRateThrottle
from rest_framework.views import APIView

from usage import queries
from usage.permissions import SeesEveryone, sees_everyone

COUNTER_FIELDS = ("requests", "input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens",
                  "error_requests", "estimated_requests")
SERIES_FIELDS = ("date", *COUNTER_FIELDS, "spend_usd")
MODEL_FIELDS = ("facade", *COUNTER_FIELDS, "spend_usd", "share")
LEADERBOARD_FIELDS = ("rank", "previous_rank", "user_id", "username", "requests", "input_tokens", "output_tokens",
                      "tokens", "spend_usd", "share")


class CSVRenderer(BaseRenderer):
    """The rows of a usage answer (its `series`, `models` or `results` list) as CSV, with a header
    row of the JSON field names (the view's `csv_fields`, so an empty answer still has its header).
    An error answer becomes `field,message` rows."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"
    ROW_KEYS = ("series", "models", "results")

    def render(self, data, accepted_media_type=None, renderer_context=None):
        context = renderer_context or {}
        response, view = context.get("response"), context.get("view")
        if response is not None and response.status_code >= 400:
            fields, rows = ["field", "message"], list(self.errors(data))
        else:
            rows = next((data[k] for k in self.ROW_KEYS if k in data), [])
            fields = list(getattr(view, "csv_fields", ()) or (rows[0] if rows else ()))
            if response is not None and view is not None:
                period = data.get("period") if isinstance(data, dict) else None  # validated; paginated: absent
                suffix = f"-{period}" if period in queries.WINDOWS else ""
                response["Content-Disposition"] = f'attachment; filename="codevector-{view.csv_name}{suffix}.csv"'
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.defused(row) for row in rows)
        return out.getvalue().encode()

    @staticmethod
    def defused(row: dict) -> dict:
        """A name a spreadsheet would run as a formula (a username may start with + - or @) gets a
        leading apostrophe, as OWASP advises for CSV; numbers and dates never start that way."""
        return {k: "'" + v if k in ("username", "facade") and isinstance(v, str) and v[:1] in ("=", "+", "-", "@")
                else v for k, v in row.items()}

    @staticmethod
    def errors(data):
        for field, messages in (data.items() if isinstance(data, dict) else [("detail", data)]):
            for message in messages if isinstance(messages, list) else [messages]:
                yield {"field": field, "message": str(message)}


# Response shapes, for the OpenAPI schema (the views build plain dicts).
class CountersOut(serializers.Serializer):
    requests = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    cached_input_tokens = serializers.IntegerField()
    cache_write_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    error_requests = serializers.IntegerField()
    estimated_requests = serializers.IntegerField()
    spend_usd = serializers.DecimalField(max_digits=30, decimal_places=9, help_text="Exact USD, 9 decimal places.")


class FrameOut(serializers.Serializer):
    period = serializers.ChoiceField(choices=list(queries.WINDOWS))
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    complete_through = serializers.DateTimeField(allow_null=True, help_text="Rolled up through this moment; "
                                                 "the numbers are exact either way.")


class SummaryOut(FrameOut, CountersOut):
    pass


class DayOut(CountersOut):
    date = serializers.DateField()


class SeriesOut(FrameOut):
    series = DayOut(many=True)


class ModelRowOut(CountersOut):
    facade = serializers.CharField()
    share = serializers.DecimalField(max_digits=5, decimal_places=4, help_text="Share of the period's spend, 0 to 1.")


class ModelsOut(FrameOut):
    models = ModelRowOut(many=True)


class LeaderRowOut(serializers.Serializer):
    rank = serializers.IntegerField()
    previous_rank = serializers.IntegerField(allow_null=True)
    user_id = serializers.IntegerField()
    username = serializers.CharField()
    requests = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    tokens = serializers.IntegerField()
    spend_usd = serializers.DecimalField(max_digits=30, decimal_places=9)
    share = serializers.DecimalField(max_digits=5, decimal_places=4, help_text="Share of the ranked metric, 0 to 1.")


class LeaderboardOut(serializers.Serializer):
    count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = LeaderRowOut(many=True)


class MyUsageOut(serializers.Serializer):
    summary = SummaryOut()
    series = DayOut(many=True)


class UsageThrottle(UserRateThrottle):
    scope = "usage"


def money(nanos: int) -> str:
    return format(queries.nanos_to_usd(nanos), "f")


def share(fraction: Decimal) -> str:
    return str(fraction.quantize(Decimal("0.0001")))  # the read module gives a bare 0 for an empty whole


def local_iso(moment) -> str:
    return moment.astimezone(queries.zone()).isoformat()


def counters(totals: queries.Totals) -> dict:
    return {**{name: getattr(totals, name) for name in COUNTER_FIELDS}, "spend_usd": money(totals.cost_nanos)}


class UsageParams(serializers.Serializer):
    period = serializers.ChoiceField(choices=list(queries.WINDOWS), default="7d")
    user = serializers.IntegerField(required=False, min_value=1)


class LeaderboardParams(serializers.Serializer):
    period = serializers.ChoiceField(choices=list(queries.WINDOWS), default="7d")
    by = serializers.ChoiceField(choices=list(queries.LEADERBOARD_METRICS), default="tokens")


class UsageView(APIView):
    permission_classes = [IsAuthenticated]
    throttle_classes = [UsageThrottle]
    renderer_classes = [JSONRenderer, BrowsableAPIRenderer]

    def scope(self, request) -> tuple[queries.Window, int | None]:
        """The period, and whose usage: the caller's own unless they may see everyone."""
        params = UsageParams(data=request.query_params)
        params.is_valid(raise_exception=True)
        period = queries.resolve_window(params.validated_data["period"])
        user = params.validated_data.get("user")
        if sees_everyone(request.user):
            if user is not None and not get_user_model().objects.filter(pk=user).exists():
                raise ValidationError({"user": [f"No user has the id {user}."]})
            return period, user
        if user is not None and user != request.user.pk:  # 403 whether or not that id exists: no probing
            raise PermissionDenied("You may see only your own usage.")
        return period, request.user.pk

    @staticmethod
    def frame(period: queries.Window) -> dict:
        complete = queries.complete_through()
        return {"period": period.key, "start": local_iso(period.start), "end": local_iso(period.end),
                "complete_through": local_iso(complete) if complete else None}


def summary_data(period, user_id) -> dict:
    return counters(queries.summary(period, user_id).totals)


def series_data(period, user_id) -> list[dict]:
    return [{"date": point.date.isoformat(), **counters(point.totals)} for point in queries.daily_series(period, user_id)]


@extend_schema(parameters=[UsageParams], responses=SummaryOut)
class SummaryView(UsageView):
    def get(self, request):
        period, user_id = self.scope(request)
        return Response({**self.frame(period), **summary_data(period, user_id)})


@extend_schema(parameters=[UsageParams], responses=SeriesOut)
class SeriesView(UsageView):
    renderer_classes = [JSONRenderer, CSVRenderer, BrowsableAPIRenderer]
    csv_name, csv_fields = "series", SERIES_FIELDS

    def get(self, request):
        period, user_id = self.scope(request)
        return Response({**self.frame(period), "series": series_data(period, user_id)})


@extend_schema(parameters=[UsageParams], responses=ModelsOut)
class ModelsView(UsageView):
    renderer_classes = [JSONRenderer, CSVRenderer, BrowsableAPIRenderer]
    csv_name, csv_fields = "models", MODEL_FIELDS

    def get(self, request):
        period, user_id = self.scope(request)
        rows = [{"facade": row.facade_name, **counters(row.totals), "share": share(row.share)}
                for row in queries.by_facade(period, user_id)]
        return Response({**self.frame(period), "models": rows})


class LeaderboardPagination(PageNumberPagination):
    page_size = 100


@extend_schema(parameters=[LeaderboardParams, OpenApiParameter("page", int, description="Page number, 100 rows a page.")],
               responses=LeaderboardOut)
class LeaderboardView(UsageView):
    permission_classes = [SeesEveryone]
    renderer_classes = [JSONRenderer, CSVRenderer, BrowsableAPIRenderer]
    csv_name, csv_fields = "leaderboard", LEADERBOARD_FIELDS

    def get(self, request):
        params = LeaderboardParams(data=request.query_params)
        params.is_valid(raise_exception=True)
        period = queries.resolve_window(params.validated_data["period"])
        by = params.validated_data["by"]
        board = queries.leaderboard(period, by)
        if request.accepted_renderer.format == "csv":  # a download is the whole board, not its first page
            return Response({"period": period.key, "results": [self.row(r) for r in board]})
        paginator = LeaderboardPagination()
        page = paginator.paginate_queryset(board, request, view=self)
        return paginator.get_paginated_response([self.row(r) for r in page])

    @staticmethod
    def row(row: queries.LeaderRow) -> dict:
        return {"rank": row.rank, "previous_rank": row.previous_rank, "user_id": row.user_id,
                "username": row.username, "requests": row.totals.requests, "input_tokens": row.totals.input_tokens,
                "output_tokens": row.totals.output_tokens, "tokens": row.totals.tokens,
                "spend_usd": money(row.totals.cost_nanos), "share": share(row.share)}


@extend_schema(parameters=[OpenApiParameter("period", str, enum=list(queries.WINDOWS), default="7d")],
               responses=MyUsageOut)
class MyUsageView(UsageView):
    def get(self, request):
        params = UsageParams(data={"period": request.query_params.get("period", "7d")})
        params.is_valid(raise_exception=True)
        period = queries.resolve_window(params.validated_data["period"])
        return Response({"summary": {**self.frame(period), **summary_data(period, request.user.pk)},
                         "series": series_data(period, request.user.pk)})
