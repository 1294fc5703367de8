"""The usage API (Django REST framework): the numbers of the usage pages, as JSON or CSV.

Staff with usage.view_usage_dashboard (and superusers) see everyone, by session or by their own
API key; anyone else sees only themself, and a project's owners their project
(/api/projects/<public id>/usage/: every member's keys in it). Money is a decimal string with 9
digits after the point; times are ISO 8601 with offset.
"""

import csv
import io

from django.contrib.auth import get_user_model
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import BaseRenderer, BrowsableAPIRenderer, JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from usage.reads import queries
from usage.rollups import watermark
from usage.web.permissions import ReadsProject, SeesEveryone, project_model, sees_everyone
from usage.web.serializers import (DayOut, KeyLeaderRowOut, KeyRowOut, KeysOut, LeaderboardOut, LeaderboardParams,
                                   LeaderRowOut, ModelRowOut, ModelsOut, MyUsageOut, PeriodParams,
                                   ProjectLeaderRowOut, ProjectRowOut, ProjectsOut, ProjectUsageOut, SeriesOut,
                                   SummaryOut, UsageParams, csv_columns)


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


LEADER_ROWS = {"user": (LeaderRowOut, "leaderboard"), "key": (KeyLeaderRowOut, "leaderboard-keys"),
               "project": (ProjectLeaderRowOut, "leaderboard-projects")}
TABLE_RENDERERS = [JSONRenderer, CSVRenderer, BrowsableAPIRenderer]


class UsageView(APIView):
    permission_classes = [IsAuthenticated]
    throttle_scope = "usage"  # its rate: REST_FRAMEWORK's DEFAULT_THROTTLE_RATES (API_THROTTLE_RATE)
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
        return {"window": window, "complete_through": watermark(), **rows}


# A period's rows of one kind (days, models, keys, projects), as JSON or CSV: the answer's serializer
# (`answer`) holds them under the view's `csv_name`. A comment, not a docstring: drf-spectacular
# would describe each subclass's endpoint with it.
class RowsView(UsageView):
    renderer_classes = TABLE_RENDERERS
    answer = None

    def rows(self, window: queries.Window, user_id: int | None) -> list:
        raise NotImplementedError

    def get(self, request):
        window, user_id = self.scope(request)
        return Response(self.answer(self.frame(window, **{self.csv_name: self.rows(window, user_id)})).data)


@extend_schema(parameters=[UsageParams], responses=SummaryOut)
class SummaryView(UsageView):
    def get(self, request):
        window, user_id = self.scope(request)
        return Response(SummaryOut(self.frame(window, totals=queries.summary(window, user_id).totals)).data)


@extend_schema(parameters=[UsageParams], responses=SeriesOut)
class SeriesView(RowsView):
    answer, csv_name, csv_fields = SeriesOut, "series", csv_columns(DayOut)

    def rows(self, window, user_id):
        return queries.daily_series(window, user_id)


@extend_schema(parameters=[UsageParams], responses=ModelsOut)
class ModelsView(RowsView):
    answer, csv_name, csv_fields = ModelsOut, "models", csv_columns(ModelRowOut)

    def rows(self, window, user_id):
        return queries.by_facade(window, user_id)


@extend_schema(parameters=[UsageParams], responses=KeysOut)
class KeysView(RowsView):
    """Usage per API key (everyone's, or one user's with `user=`): staff with the usage permission only."""

    permission_classes = [SeesEveryone]
    answer, csv_name, csv_fields = KeysOut, "keys", csv_columns(KeyRowOut)

    def rows(self, window, user_id):
        return queries.by_key(window, user_id)


@extend_schema(parameters=[PeriodParams], responses=ProjectsOut)
class ProjectsView(RowsView):
    """Usage per project (its keys' usage): staff with the usage permission only."""

    permission_classes = [SeesEveryone]
    answer, csv_name, csv_fields = ProjectsOut, "projects", csv_columns(ProjectRowOut)

    def scope(self, request):
        return self.period(request), None  # every project's usage, whoever's keys

    def rows(self, window, user_id):
        return queries.by_project(window)


class LeaderboardPagination(PageNumberPagination):
    page_size = 100


@extend_schema(parameters=[LeaderboardParams, OpenApiParameter("page", int, description="Page number, 100 rows a page.")],
               responses=LeaderboardOut)
class LeaderboardView(UsageView):
    permission_classes = [SeesEveryone]
    renderer_classes = TABLE_RENDERERS
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
