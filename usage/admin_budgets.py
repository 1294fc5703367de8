"""Budgets in the admin: caps edited in USD, with the current period's spend, a progress bar and
the reset time. Imported by usage/admin.py."""

from django import forms
from django.contrib import admin
from django.utils import timezone
from django.utils.html import format_html

from usage.budgets import budget_period_bounds, state_of
from usage.money import nanos_to_usd, usd_for_people, usd_to_nanos
from usage.models import Budget


class BudgetForm(forms.ModelForm):
    """The cap is edited in USD and stored as integer nanodollars."""

    limit_usd = forms.DecimalField(label="Cap (USD)", min_value=0, max_digits=30, decimal_places=9)

    class Meta:
        model = Budget
        fields = ["user", "period", "limit_usd", "warn_percent", "is_active"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.initial["limit_usd"] = self.instance.limit_usd

    def clean(self):
        cleaned = super().clean()
        clash = Budget.objects.filter(user=cleaned.get("user"), period=cleaned.get("period"))
        if self.instance.pk:
            clash = clash.exclude(pk=self.instance.pk)
        if clash.exists():
            raise forms.ValidationError("There is already a budget for this user (or default) and period.")
        if cleaned.get("warn_percent") is not None and not 1 <= cleaned["warn_percent"] <= 100:
            self.add_error("warn_percent", "A percent from 1 to 100.")
        return cleaned

    def save(self, commit=True):
        self.instance.limit_nanos = usd_to_nanos(self.cleaned_data["limit_usd"])
        return super().save(commit)


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    form = BudgetForm
    list_display = ["who", "period", "cap", "warn_percent", "is_active", "spend", "progress", "resets", "status"]
    list_filter = ["period", "is_active"]
    search_fields = ["user__username"]
    list_select_related = ["user"]
    autocomplete_fields = ["user"]
    readonly_fields = ["current_state"]

    def get_fields(self, request, obj=None):
        fields = ["user", "period", "limit_usd", "warn_percent", "is_active"]
        return fields + ["current_state"] if obj else fields

    def _state(self, obj):
        if not hasattr(obj, "_budget_state"):
            obj._budget_state = state_of(obj) if obj.user_id else None
        return obj._budget_state

    @admin.display(description="User", ordering="user__username")
    def who(self, obj):
        return obj.user.username if obj.user_id else "default (every user without their own)"

    @admin.display(description="Cap", ordering="limit_nanos")
    def cap(self, obj):
        return usd_for_people(obj.limit_usd)

    @admin.display(description="Spend this period")
    def spend(self, obj):
        state = self._state(obj)
        return usd_for_people(nanos_to_usd(state.spend_nanos)) if state else "per user"

    @admin.display(description="Used")
    def progress(self, obj):
        state = self._state(obj)
        if state is None:
            return "—"
        percent = min(state.percent_used, 100)
        return format_html('<progress max="100" value="{}" title="{}%"></progress> {}%', percent, state.percent_used,
                           state.percent_used)

    @admin.display(description="Resets")
    def resets(self, obj):
        _, resets_at = budget_period_bounds(obj.period, timezone.now())
        return timezone.localtime(resets_at).strftime("%Y-%m-%d %H:%M %Z") if resets_at else "never"

    @admin.display(description="Status")
    def status(self, obj):
        state = self._state(obj)
        if not obj.is_active:
            return "inactive"
        if state is None:
            return "default"
        return "exceeded" if state.exceeded else "warning" if state.warning else "ok"

    @admin.display(description="This period")
    def current_state(self, obj):
        state = self._state(obj)
        if state is None:
            return "A default budget: each user's spend is shown on their usage page."
        return format_html("{} spent of {} ({}%), {} remaining; resets {}.", usd_for_people(nanos_to_usd(state.spend_nanos)),
                           usd_for_people(obj.limit_usd), state.percent_used, usd_for_people(nanos_to_usd(max(state.remaining_nanos, 0))),
                           self.resets(obj))
