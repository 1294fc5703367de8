"""The usage API's shapes: the query parameters it reads and the answers it gives (usage.web.api).

The views answer through these serializers and the OpenAPI schema describes them, so a field is
declared once for both. Shared groups of fields are classes of their own (the counters, a key, a
project, a rank), and a row lists its groups as bases in the order its fields appear: DRF puts
the fields of the bases first, in the order the bases are named. The groups carry comments, not
docstrings: drf-spectacular would describe every row with its first base's docstring.
"""

from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.utils import PolymorphicProxySerializer
from rest_framework import serializers

from usage.calendar import zone
from usage.counters import COUNTERS
from usage.reads import queries

COUNTER_FIELDS = tuple(name for name in COUNTERS if name != "cost_nanos")  # cost is shown as spend_usd


class LocalDateTimeField(serializers.DateTimeField):
    """ISO 8601 in the gateway's TIME_ZONE, with its offset (DRF would write UTC as `Z`)."""

    def to_representation(self, value):
        return value.astimezone(zone()).isoformat() if value is not None else None


class UsdField(serializers.DecimalField):
    """Money: a decimal string with 9 digits after the point."""

    def __init__(self, **kwargs):
        super().__init__(max_digits=30, decimal_places=9, **kwargs)


class ShareField(serializers.DecimalField):
    """A share of a whole, 0 to 1, with 4 digits after the point."""

    def __init__(self, of: str, **kwargs):
        super().__init__(max_digits=5, decimal_places=4, help_text=f"Share of {of}, 0 to 1.", **kwargs)


# --- parameters -------------------------------------------------------------------------------------


class PeriodParams(serializers.Serializer):
    period = serializers.ChoiceField(choices=list(queries.WINDOWS), default="7d")


class UsageParams(PeriodParams):
    user = serializers.IntegerField(required=False, min_value=1)


class LeaderboardParams(PeriodParams):
    by = serializers.ChoiceField(choices=list(queries.LEADERBOARD_METRICS), default="tokens")
    group = serializers.ChoiceField(choices=list(queries.LEADERBOARD_GROUPS), default="user",
                                    help_text="Rank users, API keys (each with its owner) or projects.")


# --- groups of fields -------------------------------------------------------------------------------


class FrameOut(serializers.Serializer):  # the period an answer covers, and how far the rollups have come
    period = serializers.ChoiceField(choices=list(queries.WINDOWS), source="window.key")
    start = LocalDateTimeField(source="window.start")
    end = LocalDateTimeField(source="window.end")
    complete_through = LocalDateTimeField(allow_null=True, help_text="Rolled up through this moment; "
                                          "the numbers are exact either way.")


class CountersOut(serializers.Serializer):  # one field per counter of usage.counters; cost as exact USD
    for _name in COUNTER_FIELDS:  # declared from the one list, so a new counter needs no line here
        vars()[_name] = serializers.IntegerField(source=f"totals.{_name}")
    del _name
    spend_usd = UsdField(source="totals.spend_usd", help_text="Exact USD, 9 decimal places.")


class ShareOfSpendOut(serializers.Serializer):
    share = ShareField("the period's spend")


class DateOut(serializers.Serializer):
    date = serializers.DateField()


class FacadeOut(serializers.Serializer):
    facade = serializers.CharField(source="facade_name")


class KeyNameOut(serializers.Serializer):  # an API key as usage rows name it: id, prefix, name, its owner
    key_id = serializers.IntegerField()
    api_key = serializers.CharField(source="prefix", help_text="The key's visible prefix; `pre-<user id>` is "
                                    "the user's usage from before per-key accounting.")
    name = serializers.CharField(allow_blank=True)
    user_id = serializers.IntegerField(help_text="The key's owner.")
    username = serializers.CharField()


class ProjectNameOut(serializers.Serializer):
    project_id = serializers.CharField(source="public_id", help_text="The project's public id (proj_...).")
    name = serializers.CharField()


class UserNameOut(serializers.Serializer):
    user_id = serializers.IntegerField()
    username = serializers.CharField()


class RankOut(serializers.Serializer):
    rank = serializers.IntegerField()
    previous_rank = serializers.IntegerField(allow_null=True)


class LeaderNumbersOut(serializers.Serializer):  # a leaderboard row's totals, and its share of the ranked metric
    requests = serializers.IntegerField(source="totals.requests")
    input_tokens = serializers.IntegerField(source="totals.input_tokens")
    output_tokens = serializers.IntegerField(source="totals.output_tokens")
    tokens = serializers.IntegerField(source="totals.tokens")
    spend_usd = UsdField(source="totals.spend_usd")
    share = ShareField("the ranked metric")


class ClosedRow(serializers.Serializer):
    """A row whose schema allows no other properties, so that `oneOf` tells a user's row from a key's."""


class ClosedRowExtension(OpenApiSerializerExtension):
    target_class = ClosedRow
    match_subclasses = True

    def map_serializer(self, auto_schema, direction):
        return {**auto_schema._map_basic_serializer(self.target, direction), "additionalProperties": False}


# --- rows -------------------------------------------------------------------------------------------


class DayOut(DateOut, CountersOut):
    pass


class ModelRowOut(FacadeOut, CountersOut, ShareOfSpendOut):
    pass


class KeyRowOut(KeyNameOut, CountersOut, ShareOfSpendOut):
    pass


class ProjectRowOut(ProjectNameOut, CountersOut, ShareOfSpendOut):
    pass


class LeaderRowOut(ClosedRow, RankOut, UserNameOut, LeaderNumbersOut):
    pass


class KeyLeaderRowOut(ClosedRow, RankOut, KeyNameOut, LeaderNumbersOut):
    pass


class ProjectLeaderRowOut(ClosedRow, RankOut, ProjectNameOut, LeaderNumbersOut):
    pass


class ProjectOut(serializers.Serializer):
    project_id = serializers.CharField(source="public_id")
    name = serializers.CharField()
    description = serializers.CharField(allow_blank=True)
    active = serializers.BooleanField(source="is_active")


# --- answers ----------------------------------------------------------------------------------------


class SummaryOut(FrameOut, CountersOut):
    pass


class SeriesOut(FrameOut):
    series = DayOut(many=True)


class ModelsOut(FrameOut):
    models = ModelRowOut(many=True)


class KeysOut(FrameOut):
    keys = KeyRowOut(many=True)


class ProjectsOut(FrameOut):
    projects = ProjectRowOut(many=True, help_text="Projects with usage in the period (their keys' usage), by spend.")


class ProjectUsageOut(serializers.Serializer):
    project = ProjectOut()
    summary = SummaryOut()
    series = DayOut(many=True)
    models = ModelRowOut(many=True)
    keys = KeyRowOut(many=True, help_text="The project's API keys, every member's, by spend.")


class MyUsageOut(serializers.Serializer):
    summary = SummaryOut()
    series = DayOut(many=True)
    keys = KeyRowOut(many=True, help_text="The caller's own API keys, by spend.")


class LeaderboardOut(serializers.Serializer):
    count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = PolymorphicProxySerializer(
        component_name="LeaderboardRow", serializers=[LeaderRowOut, KeyLeaderRowOut, ProjectLeaderRowOut],
        resource_type_field_name=None, many=True,
        help_text="Users (group=user), API keys with their owner (group=key) or projects (group=project).")


def csv_columns(serializer_class) -> tuple[str, ...]:
    return tuple(serializer_class().fields)
