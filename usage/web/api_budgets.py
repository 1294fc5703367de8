"""Budgets over the API: staff manage them at /api/budgets/, key holders read theirs at
/api/me/budgets/. Money is a decimal string with 9 digits after the point."""

from decimal import Decimal

from django.contrib.auth import get_user_model
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import generics, serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from usage.budgets.setting import alert_percents_error
from usage.budgets.states import state_of, states_for
from usage.money import usd_exact, usd_to_nanos
from usage.models import Budget
from usage.web.permissions import ManagesBudgets, SeesEveryone


def _related(field: str):
    return Budget._meta.get_field(field).related_model.objects.all()  # gateway's keys and projects, by name


class BudgetSerializer(serializers.ModelSerializer):
    """A budget's subject is named by `scope` and one of `user` (id), `key` (prefix) or `project`
    (public id); without `scope` it follows from which is given (none: the default)."""

    scope = serializers.ChoiceField(choices=Budget.Scope.choices, required=False)
    user = serializers.PrimaryKeyRelatedField(queryset=get_user_model().objects.all(), allow_null=True,
                                              required=False, default=None)
    username = serializers.CharField(source="user.username", read_only=True, default=None)
    key = serializers.SlugRelatedField(slug_field="prefix", queryset=_related("key"), allow_null=True,
                                       required=False, default=None)
    project = serializers.SlugRelatedField(slug_field="public_id", queryset=_related("project"), allow_null=True,
                                           required=False, default=None)
    limit_usd = serializers.DecimalField(max_digits=30, decimal_places=9, min_value=Decimal(0))
    warn_percent = serializers.IntegerField(min_value=1, max_value=100, allow_null=True, required=False)
    alert_percents = serializers.ListField(child=serializers.IntegerField(min_value=1, max_value=100),
                                           required=False, max_length=100)
    state = serializers.SerializerMethodField()

    class Meta:
        model = Budget
        fields = ["id", "scope", "user", "username", "key", "project", "period", "limit_usd", "warn_percent",
                  "alert_percents", "is_active", "state"]
        validators = []  # uniqueness per subject and period is checked below, defaults included

    def to_representation(self, budget):
        data = super().to_representation(budget)
        data["limit_usd"] = usd_exact(budget.limit_nanos)
        return data

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_state(self, budget):
        if budget.is_default:
            return None  # a default's spend is per user: see /api/me/budgets/ or the user's page
        state = state_of(budget)
        return {k: state.as_dict()[k] for k in ("spend_usd", "remaining_usd", "resets_at", "warning")}

    def validate(self, attrs):
        current = {name: attrs.get(name, getattr(self.instance, name, None)) for name in ("user", "key", "project")}
        if self.instance is not None and "scope" not in attrs and not any(name in attrs for name in current):
            scope = self.instance.scope
        else:
            scope = attrs.get("scope") or next((s for s, f in Budget.SUBJECT_FIELDS.items() if attrs.get(f)),
                                               Budget.Scope.DEFAULT)
        subject_field = Budget.SUBJECT_FIELDS.get(scope)
        if subject_field and current[subject_field] is None:
            raise serializers.ValidationError({subject_field: f"A {scope} budget names its {subject_field}."})
        others = [f for f in current if f != subject_field and current[f] is not None]
        if others:
            raise serializers.ValidationError(
                {others[0]: f"A {scope} budget names {'no one' if subject_field is None else 'its ' + subject_field} "
                            f"alone: leave {others[0]} empty."})
        attrs.update({f: None for f in current if f != subject_field}, scope=scope)
        period = attrs.get("period", getattr(self.instance, "period", None))
        clash = Budget.objects.filter(scope=scope, period=period)
        if subject_field:
            clash = clash.filter(**{subject_field: current[subject_field]})
        if self.instance is not None:
            clash = clash.exclude(pk=self.instance.pk)
        if clash.exists():
            who = "the default" if subject_field is None else f"this {scope}"
            raise serializers.ValidationError(f"{who} already has a {period} budget; change that one instead.")
        if "alert_percents" in attrs:
            if error := alert_percents_error(attrs["alert_percents"]):
                raise serializers.ValidationError({"alert_percents": error[:1].upper() + error[1:] + "."})
            attrs["alert_percents"] = sorted(attrs["alert_percents"])
        if "limit_usd" in attrs:
            attrs["limit_nanos"] = usd_to_nanos(attrs.pop("limit_usd"))
        return attrs


class BudgetList(generics.ListCreateAPIView):
    permission_classes = [SeesEveryone, ManagesBudgets]
    serializer_class = BudgetSerializer
    queryset = Budget.objects.select_related("user", "key", "project").order_by("id")


class BudgetDetail(generics.RetrieveUpdateDestroyAPIView):
    permission_classes = [SeesEveryone, ManagesBudgets]
    serializer_class = BudgetSerializer
    queryset = Budget.objects.select_related("user", "key", "project")


@extend_schema(responses=dict)
class MyBudgets(APIView):
    permission_classes = [IsAuthenticated]

    def get(self, request):
        """Every budget that applies to the calling key (its user's or the default, the key's own and
        its project's); signed in without a key, the user's."""
        key = request.auth if hasattr(request.auth, "project_id") else None
        return Response([state.as_dict() for state in states_for(
            request.user.pk, key_id=key.pk if key else None, project_id=key.project_id if key else None)])
