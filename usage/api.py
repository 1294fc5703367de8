"""The usage API (Django REST framework): the numbers of the usage pages, as JSON or CSV.

Staff with usage.view_usage_dashboard (and superusers) see everyone, by session or by their own
API key; anyone else sees only themself. Money is a decimal string with 9 digits after the
point; times are ISO 8601 with offset.
"""

import csv
import io

from django.contrib.auth import get_user_model
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.exceptions import PermissionDenied
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


class CSVRenderer(BaseRenderer):
    """The rows of a usage answer (its `series`, `models` or `results` list) as CSV, with a header
    row of the JSON field names."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"
    ROW_KEYS = ("series", "models", "results")

    def render(self, data, accepted_media_type=None, renderer_context=None):
        rows = data if isinstance(data, list) else next((data[k] for k in self.ROW_KEYS if k in data), [data])
        out = io.StringIO()
        if rows:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        return out.getvalue().encode()


class UsageThrottle(UserRateThrottle):
    scope = "usage"


def money(nanos: int) -> str:
    return format(queries.nanos_to_usd(nanos), "f")


def counters(totals: queries.Totals) -> dict:
    return {**{name: getattr(totals, name) for name in COUNTER_FIELDS}, "spend_usd": money(totals.cost_nanos)}


class UsageParams(serializers.Serializer):
    period = serializers.ChoiceField(choices=list(queries.PERIODS), default="7d")
    user = serializers.IntegerField(required=False, min_value=1)

    def validate_user(self, value):
        if not get_user_model().objects.filter(pk=value).exists():
            raise serializers.ValidationError(f"No user has the id {value}.")
        return value


class LeaderboardParams(serializers.Serializer):
    period = serializers.ChoiceField(choices=list(queries.PERIODS), default="7d")
    by = serializers.ChoiceField(choices=list(queries.LEADERBOARD_METRICS), default="tokens")


class UsageView(APIView):
    permission_classes = [IsAuthenticated]
    throttle_classes = [UsageThrottle]
    renderer_classes = [JSONRenderer, BrowsableAPIRenderer]

    def scope(self, request) -> tuple[queries.Period, int | None]:
        """The period, and whose usage: the caller's own unless they may see everyone."""
        params = UsageParams(data=request.query_params)
        params.is_valid(raise_exception=True)
        period = queries.resolve_period(params.validated_data["period"])
        user = params.validated_data.get("user")
        if sees_everyone(request.user):
            return period, user
        if user is not None and user != request.user.pk:
            raise PermissionDenied("You may see only your own usage.")
        return period, request.user.pk

    @staticmethod
    def frame(period: queries.Period) -> dict:
        return {"period": period.key, "start": period.start.astimezone(queries.zone()).isoformat(),
                "end": period.end.astimezone(queries.zone()).isoformat(),
                "complete_through": (queries.complete_through().astimezone(queries.zone()).isoformat()
                                     if queries.complete_through() else None)}


def summary_data(period, user_id) -> dict:
    return counters(queries.summary(period, user_id).totals)


def series_data(period, user_id) -> list[dict]:
    return [{"date": point.date.isoformat(), **counters(point.totals)} for point in queries.daily_series(period, user_id)]


@extend_schema(parameters=[UsageParams], responses=dict)
class SummaryView(UsageView):
    def get(self, request):
        period, user_id = self.scope(request)
        return Response({**self.frame(period), **summary_data(period, user_id)})


@extend_schema(parameters=[UsageParams], responses=dict)
class SeriesView(UsageView):
    renderer_classes = [JSONRenderer, CSVRenderer, BrowsableAPIRenderer]

    def get(self, request):
        period, user_id = self.scope(request)
        return Response({**self.frame(period), "series": series_data(period, user_id)})


@extend_schema(parameters=[UsageParams], responses=dict)
class ModelsView(UsageView):
    renderer_classes = [JSONRenderer, CSVRenderer, BrowsableAPIRenderer]

    def get(self, request):
        period, user_id = self.scope(request)
        rows = [{"facade": row.facade_name, **counters(row.totals), "share": str(row.share)}
                for row in queries.by_facade(period, user_id)]
        return Response({**self.frame(period), "models": rows})


class LeaderboardPagination(PageNumberPagination):
    page_size = 100


@extend_schema(parameters=[LeaderboardParams], responses=dict)
class LeaderboardView(UsageView):
    permission_classes = [SeesEveryone]
    renderer_classes = [JSONRenderer, CSVRenderer, BrowsableAPIRenderer]

    def get(self, request):
        params = LeaderboardParams(data=request.query_params)
        params.is_valid(raise_exception=True)
        period = queries.resolve_period(params.validated_data["period"])
        by = params.validated_data["by"]
        paginator = LeaderboardPagination()
        board = queries.leaderboard(period, by)
        page = paginator.paginate_queryset(board, request, view=self)
        rows = [{"rank": row.rank, "previous_rank": row.previous_rank, "user_id": row.user_id,
                 "username": row.username, "requests": row.totals.requests, "input_tokens": row.totals.input_tokens,
                 "output_tokens": row.totals.output_tokens, "tokens": row.totals.tokens,
                 "spend_usd": money(row.totals.cost_nanos), "share": str(row.share)} for row in page]
        return paginator.get_paginated_response(rows)


@extend_schema(responses=dict)
class MyUsageView(UsageView):
    def get(self, request):
        params = UsageParams(data={"period": request.query_params.get("period", "7d")})
        params.is_valid(raise_exception=True)
        period = queries.resolve_period(params.validated_data["period"])
        return Response({"summary": {**self.frame(period), **summary_data(period, request.user.pk)},
                         "series": series_data(period, request.user.pk)})
