"""The usage API (Django REST framework): the numbers of the usage pages, as JSON or CSV.

Staff with usage.view_usage_dashboard (and superusers) see everyone, by session or by their own
API key; anyone else sees only themself, and a project's owners their project
(/api/projects/<public id>/usage/: every member's keys in it). Money is a decimal string with 9
digits after the point; times are ISO 8601 with offset.
"""

import csv
import io

from django.contrib.auth import get_user_model
from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, PolymorphicProxySerializer, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import BaseRenderer, BrowsableAPIRenderer, JSONRenderer
from rest_framework.response import Response
from rest_framework.throttling import UserRateThrottle
from rest_framework.views import APIView

from usage.reads import queries
from usage.calendar import zone
from usage.counters import COUNTERS
from usage.web.permissions import ReadsProject, SeesEveryone, project_model, sees_everyone

COUNTER_FIELDS = tuple(name for name in COUNTERS if name != "cost_nanos")  # cost is shown as spend_usd


class CSVRenderer(BaseRenderer):
    """The rows of a usage answer (its `series`, `models` or `results` list) as CSV, with a header
    row of the JSON field names (the view's `csv_fields`, so an empty answer still has its header).
    An error answer becomes `field,message` rows."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"
    ROW_KEYS = ("series", "models", "keys", "projects", "results")

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
        return {k: "'" + v if k in ("username", "facade", "name") and isinstance(v, str) and v[:1] in ("=", "+", "-", "@")
                else v for k, v in row.items()}

    @staticmethod
    def errors(data):
        for field, messages in (data.items() if isinstance(data, dict) else [("detail", data)]):
            for message in messages if isinstance(messages, list) else [messages]:
                yield {"field": field, "message": str(message)}


# Response shapes: the views answer through these serializers, and the OpenAPI schema describes them.


class LocalDateTimeField(serializers.DateTimeField):
    """ISO 8601 in the gateway's TIME_ZONE, with its offset (DRF would write UTC as `Z`)."""

    def to_representation(self, value):
        return value.astimezone(zone()).isoformat() if value is not None else None


def counter_fields(source: str) -> dict[str, serializers.Field]:
    """One field per counter of usage.counters (cost as exact USD), read from `source` + name."""
    fields = {name: serializers.IntegerField(source=source + name) for name in COUNTER_FIELDS}
    fields["spend_usd"] = serializers.DecimalField(max_digits=30, decimal_places=9, source=source + "spend_usd",
                                                   help_text="Exact USD, 9 decimal places.")
    return fields


def share_field(of: str) -> serializers.DecimalField:
    return serializers.DecimalField(max_digits=5, decimal_places=4, help_text=f"Share of {of}, 0 to 1.")


class FrameOut(serializers.Serializer):
    period = serializers.ChoiceField(choices=list(queries.WINDOWS), source="window.key")
    start = LocalDateTimeField(source="window.start")
    end = LocalDateTimeField(source="window.end")
    complete_through = LocalDateTimeField(allow_null=True, help_text="Rolled up through this moment; "
                                          "the numbers are exact either way.")


SummaryOut = type("SummaryOut", (FrameOut,), counter_fields("totals."))
DayOut = type("DayOut", (serializers.Serializer,), {"date": serializers.DateField(), **counter_fields("totals.")})


class SeriesOut(FrameOut):
    series = DayOut(many=True)


ModelRowOut = type("ModelRowOut", (serializers.Serializer,), {
    "facade": serializers.CharField(source="facade_name"), **counter_fields("totals."),
    "share": share_field("the period's spend")})


class ModelsOut(FrameOut):
    models = ModelRowOut(many=True)


def key_fields() -> dict[str, serializers.Field]:
    """An API key as usage rows name it: id, visible prefix, name, and its owner."""
    return {
        "key_id": serializers.IntegerField(),
        "api_key": serializers.CharField(source="prefix", help_text="The key's visible prefix; `pre-<user id>` is "
                                         "the user's usage from before per-key accounting."),
        "name": serializers.CharField(allow_blank=True),
        "user_id": serializers.IntegerField(help_text="The key's owner."),
        "username": serializers.CharField(),
    }


KeyRowOut = type("KeyRowOut", (serializers.Serializer,), {
    **key_fields(), **counter_fields("totals."), "share": share_field("the period's spend")})


class KeysOut(FrameOut):
    keys = KeyRowOut(many=True)


def project_fields() -> dict[str, serializers.Field]:
    return {"project_id": serializers.CharField(source="public_id", help_text="The project's public id (proj_...)."),
            "name": serializers.CharField()}


ProjectRowOut = type("ProjectRowOut", (serializers.Serializer,), {
    **project_fields(), **counter_fields("totals."), "share": share_field("the period's spend")})


class ProjectsOut(FrameOut):
    projects = ProjectRowOut(many=True, help_text="Projects with usage in the period (their keys' usage), by spend.")


class ProjectOut(serializers.Serializer):
    project_id = serializers.CharField(source="public_id")
    name = serializers.CharField()
    description = serializers.CharField(allow_blank=True)
    active = serializers.BooleanField(source="is_active")


class ProjectUsageOut(serializers.Serializer):
    project = ProjectOut()
    summary = SummaryOut()
    series = DayOut(many=True)
    models = ModelRowOut(many=True)
    keys = KeyRowOut(many=True, help_text="The project's API keys, every member's, by spend.")


class ClosedRow(serializers.Serializer):
    """A row whose schema allows no other properties, so that `oneOf` tells a user's row from a key's."""


class ClosedRowExtension(OpenApiSerializerExtension):
    target_class = ClosedRow
    match_subclasses = True

    def map_serializer(self, auto_schema, direction):
        return {**auto_schema._map_basic_serializer(self.target, direction), "additionalProperties": False}


def leader_numbers() -> dict[str, serializers.Field]:
    return {
        "requests": serializers.IntegerField(source="totals.requests"),
        "input_tokens": serializers.IntegerField(source="totals.input_tokens"),
        "output_tokens": serializers.IntegerField(source="totals.output_tokens"),
        "tokens": serializers.IntegerField(source="totals.tokens"),
        "spend_usd": serializers.DecimalField(max_digits=30, decimal_places=9, source="totals.spend_usd"),
        "share": share_field("the ranked metric"),
    }


def rank_fields() -> dict[str, serializers.Field]:
    return {"rank": serializers.IntegerField(), "previous_rank": serializers.IntegerField(allow_null=True)}


LeaderRowOut = type("LeaderRowOut", (ClosedRow,), {
    **rank_fields(), "user_id": serializers.IntegerField(), "username": serializers.CharField(), **leader_numbers()})
KeyLeaderRowOut = type("KeyLeaderRowOut", (ClosedRow,), {**rank_fields(), **key_fields(), **leader_numbers()})
ProjectLeaderRowOut = type("ProjectLeaderRowOut", (ClosedRow,), {**rank_fields(), **project_fields(),
                                                                 **leader_numbers()})
LEADER_ROWS = {"user": (LeaderRowOut, "leaderboard"), "key": (KeyLeaderRowOut, "leaderboard-keys"),
               "project": (ProjectLeaderRowOut, "leaderboard-projects")}


class LeaderboardOut(serializers.Serializer):
    count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = PolymorphicProxySerializer(
        component_name="LeaderboardRow", serializers=[LeaderRowOut, KeyLeaderRowOut, ProjectLeaderRowOut],
        resource_type_field_name=None, many=True,
        help_text="Users (group=user), API keys with their owner (group=key) or projects (group=project).")


class MyUsageOut(serializers.Serializer):
    summary = SummaryOut()
    series = DayOut(many=True)
    keys = KeyRowOut(many=True, help_text="The caller's own API keys, by spend.")


def csv_columns(serializer_class) -> tuple[str, ...]:
    return tuple(serializer_class().fields)


class UsageThrottle(UserRateThrottle):
    scope = "usage"


class UsageParams(serializers.Serializer):
    period = serializers.ChoiceField(choices=list(queries.WINDOWS), default="7d")
    user = serializers.IntegerField(required=False, min_value=1)


class PeriodParams(serializers.Serializer):
    period = serializers.ChoiceField(choices=list(queries.WINDOWS), default="7d")


class LeaderboardParams(serializers.Serializer):
    period = serializers.ChoiceField(choices=list(queries.WINDOWS), default="7d")
    by = serializers.ChoiceField(choices=list(queries.LEADERBOARD_METRICS), default="tokens")
    group = serializers.ChoiceField(choices=list(queries.LEADERBOARD_GROUPS), default="user",
                                    help_text="Rank users, API keys (each with its owner) or projects.")


class UsageView(APIView):
    permission_classes = [IsAuthenticated]
    throttle_classes = [UsageThrottle]
    renderer_classes = [JSONRenderer, BrowsableAPIRenderer]

    def scope(self, request) -> tuple[queries.Window, int | None]:
        """The window (?period=), and whose usage: the caller's own unless they may see everyone."""
        params = UsageParams(data=request.query_params)
        params.is_valid(raise_exception=True)
        window = queries.resolve_window(params.validated_data["period"])
        user = params.validated_data.get("user")
        if sees_everyone(request.user):
            if user is not None and not get_user_model().objects.filter(pk=user).exists():
                raise ValidationError({"user": [f"No user has the id {user}."]})
            return window, user
        if user is not None and user != request.user.pk:  # 403 whether or not that id exists: no probing
            raise PermissionDenied("You may see only your own usage.")
        return window, request.user.pk

    @staticmethod
    def period(request) -> queries.Window:
        params = PeriodParams(data={"period": request.query_params.get("period", "7d")})
        params.is_valid(raise_exception=True)
        return queries.resolve_window(params.validated_data["period"])

    @staticmethod
    def frame(window: queries.Window, **rows) -> dict:
        """What a usage answer is made of (FrameOut and the rows), for its serializer."""
        return {"window": window, "complete_through": queries.complete_through(), **rows}


@extend_schema(parameters=[UsageParams], responses=SummaryOut)
class SummaryView(UsageView):
    def get(self, request):
        window, user_id = self.scope(request)
        return Response(SummaryOut(self.frame(window, totals=queries.summary(window, user_id).totals)).data)


@extend_schema(parameters=[UsageParams], responses=SeriesOut)
class SeriesView(UsageView):
    renderer_classes = [JSONRenderer, CSVRenderer, BrowsableAPIRenderer]
    csv_name, csv_fields = "series", csv_columns(DayOut)

    def get(self, request):
        window, user_id = self.scope(request)
        return Response(SeriesOut(self.frame(window, series=queries.daily_series(window, user_id))).data)


@extend_schema(parameters=[UsageParams], responses=ModelsOut)
class ModelsView(UsageView):
    renderer_classes = [JSONRenderer, CSVRenderer, BrowsableAPIRenderer]
    csv_name, csv_fields = "models", csv_columns(ModelRowOut)

    def get(self, request):
        window, user_id = self.scope(request)
        return Response(ModelsOut(self.frame(window, models=queries.by_facade(window, user_id))).data)


class LeaderboardPagination(PageNumberPagination):
    page_size = 100


@extend_schema(parameters=[LeaderboardParams, OpenApiParameter("page", int, description="Page number, 100 rows a page.")],
               responses=LeaderboardOut)
class LeaderboardView(UsageView):
    permission_classes = [SeesEveryone]
    renderer_classes = [JSONRenderer, CSVRenderer, BrowsableAPIRenderer]
    csv_name, csv_fields = "leaderboard", csv_columns(LeaderRowOut)

    def get(self, request):
        params = LeaderboardParams(data=request.query_params)
        params.is_valid(raise_exception=True)
        window = queries.resolve_window(params.validated_data["period"])
        group = params.validated_data["group"]
        board = queries.leaderboard(window, params.validated_data["by"], group=group)
        rows, self.csv_name = LEADER_ROWS[group]
        self.csv_fields = csv_columns(rows)
        if request.accepted_renderer.format == "csv":  # a download is the whole board, not its first page
            return Response({"period": window.key, "results": rows(board, many=True).data})
        paginator = LeaderboardPagination()
        page = paginator.paginate_queryset(board, request, view=self)
        return paginator.get_paginated_response(rows(page, many=True).data)


@extend_schema(parameters=[UsageParams], responses=KeysOut)
class KeysView(UsageView):
    """Usage per API key (everyone's, or one user's with `user=`): staff with the usage permission only."""

    permission_classes = [SeesEveryone]
    renderer_classes = [JSONRenderer, CSVRenderer, BrowsableAPIRenderer]
    csv_name, csv_fields = "keys", csv_columns(KeyRowOut)

    def get(self, request):
        window, user_id = self.scope(request)
        return Response(KeysOut(self.frame(window, keys=queries.by_key(window, user_id))).data)


@extend_schema(parameters=[OpenApiParameter("period", str, enum=list(queries.WINDOWS), default="7d")],
               responses=MyUsageOut)
class MyUsageView(UsageView):
    def get(self, request):
        window = self.period(request)
        return Response(MyUsageOut({
            "summary": self.frame(window, totals=queries.summary(window, request.user.pk).totals),
            "series": queries.daily_series(window, request.user.pk),
            "keys": queries.by_key(window, request.user.pk),
        }).data)


@extend_schema(parameters=[PeriodParams], responses=ProjectsOut)
class ProjectsView(UsageView):
    """Usage per project (its keys' usage): staff with the usage permission only."""

    permission_classes = [SeesEveryone]
    renderer_classes = [JSONRenderer, CSVRenderer, BrowsableAPIRenderer]
    csv_name, csv_fields = "projects", csv_columns(ProjectRowOut)

    def get(self, request):
        window = self.period(request)
        return Response(ProjectsOut(self.frame(window, projects=queries.by_project(window))).data)


@extend_schema(
    parameters=[OpenApiParameter("public_id", str, OpenApiParameter.PATH, description="The project's public id."),
                PeriodParams],
    responses={200: ProjectUsageOut,
               403: OpenApiResponse(description="Neither an owner of the project nor staff with the usage permission."),
               404: OpenApiResponse(description="No project has this id.")})
class ProjectUsageView(UsageView):
    """One project's usage (every member's keys in it): for its owners, by their own API key, and for
    staff with the usage permission."""

    permission_classes = [IsAuthenticated, ReadsProject]

    def get(self, request, public_id: str):
        project = project_model().objects.filter(public_id=public_id).first()
        if project is None:
            raise NotFound(f"No project has the id {public_id!r}.")
        self.check_object_permissions(request, project)
        window = self.period(request)
        return Response(ProjectUsageOut({
            "project": project,
            "summary": self.frame(window, totals=queries.summary(window, project_id=project.pk).totals),
            "series": queries.daily_series(window, project_id=project.pk),
            "models": queries.by_facade(window, project_id=project.pk),
            "keys": queries.by_key(window, project_id=project.pk),
        }).data)
