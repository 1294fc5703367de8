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

from usage.budgets import states_for, state_of
from usage.money import usd_exact, usd_to_nanos
from usage.models import Budget
from usage.permissions import ManagesBudgets, SeesEveryone


class BudgetSerializer(serializers.ModelSerializer):
    user = serializers.PrimaryKeyRelatedField(queryset=get_user_model().objects.all(), allow_null=True,
                                              required=False, default=None)
    username = serializers.CharField(source="user.username", read_only=True, default=None)
    limit_usd = serializers.DecimalField(max_digits=30, decimal_places=9, min_value=Decimal(0))
    warn_percent = serializers.IntegerField(min_value=1, max_value=100, allow_null=True, required=False)
    state = serializers.SerializerMethodField()

    class Meta:
        model = Budget
        fields = ["id", "user", "username", "period", "limit_usd", "warn_percent", "is_active", "state"]
        validators = []  # (user, period) uniqueness is checked below, defaults included

    def to_representation(self, budget):
        data = super().to_representation(budget)
        data["limit_usd"] = usd_exact(budget.limit_nanos)
        return data

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_state(self, budget):
        if budget.user_id is None:
            return None  # a default's spend is per user: see /api/me/budgets/ or the user's page
        state = state_of(budget)
        return {k: state.as_dict()[k] for k in ("spend_usd", "remaining_usd", "resets_at", "warning")}

    def validate(self, attrs):
        user = attrs.get("user", getattr(self.instance, "user", None))
        period = attrs.get("period", getattr(self.instance, "period", None))
        clash = Budget.objects.filter(user=user, period=period)
        if self.instance is not None:
            clash = clash.exclude(pk=self.instance.pk)
        if clash.exists():
            who = "the default" if user is None else f"user {user.pk}"
            raise serializers.ValidationError(f"{who} already has a {period} budget; change that one instead.")
        if "limit_usd" in attrs:
            attrs["limit_nanos"] = usd_to_nanos(attrs.pop("limit_usd"))
        return attrs


class BudgetList(generics.ListCreateAPIView):
    permission_classes = [SeesEveryone, ManagesBudgets]
    serializer_class = BudgetSerializer
    queryset = Budget.objects.select_related("user").order_by("id")


class BudgetDetail(generics.RetrieveUpdateDestroyAPIView):
    permission_classes = [SeesEveryone, ManagesBudgets]
    serializer_class = BudgetSerializer
    queryset = Budget.objects.select_related("user")


@extend_schema(responses=dict)
class MyBudgets(APIView):
    permission_classes = [IsAuthenticated]

    def get(self, request):
        return Response([state.as_dict() for state in states_for(request.user.pk)])
