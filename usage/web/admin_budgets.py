"""Budgets in the admin: caps edited in USD, with the current period's spend, a progress bar and
the reset time. Imported by usage/admin.py."""

from django import forms
from django.contrib import admin
from django.utils import timezone
from django.utils.html import format_html

from usage.budgets.periods import budget_period_bounds
from usage.budgets.setting import alert_percents_error
from usage.budgets.states import state_of
from usage.money import nanos_to_usd, usd_for_people, usd_to_nanos
from usage.models import Budget


class BudgetForm(forms.ModelForm):
    """The cap is edited in USD and stored as integer nanodollars."""

    limit_usd = forms.DecimalField(label="Cap (USD)", min_value=0, max_digits=30, decimal_places=9)
    alert_percents = forms.CharField(
        label="Alert at (%)", required=False,
        help_text="Percents of the cap at which an alert is sent once per period, such as 50, 80, 100. Empty: none.")

    class Meta:
        model = Budget
        fields = ["scope", "user", "key", "project", "period", "limit_usd", "warn_percent", "alert_percents",
                  "is_active"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["scope"].required = False
        self.fields["scope"].help_text = "Blank: follows from the user, key or project chosen (none: the default)."
        if self.instance.pk:
            self.initial["limit_usd"] = self.instance.limit_usd
            self.initial["alert_percents"] = ", ".join(str(p) for p in self.instance.alert_percents)

    def clean_alert_percents(self):
        text = self.cleaned_data["alert_percents"].replace(" ", "")
        try:
            percents = [int(p) for p in text.split(",")] if text else []
        except ValueError:
            raise forms.ValidationError("Whole percents separated by commas, such as 50, 80.") from None
        if error := alert_percents_error(percents):
            raise forms.ValidationError(error[:1].upper() + error[1:] + ".")
        return sorted(percents)

    def clean(self):
        cleaned = super().clean()
        if not cleaned.get("scope"):
            cleaned["scope"] = next((scope for scope, field in Budget.SUBJECT_FIELDS.items() if cleaned.get(field)),
                                    Budget.Scope.DEFAULT)
        if cleaned.get("warn_percent") is not None and not 1 <= cleaned["warn_percent"] <= 100:
            self.add_error("warn_percent", "A percent from 1 to 100.")
        return cleaned

    def _post_clean(self):
        if "limit_usd" in self.cleaned_data:  # before the model's checks (the cap is not negative)
            self.instance.limit_nanos = usd_to_nanos(self.cleaned_data["limit_usd"])
        super()._post_clean()


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    form = BudgetForm
    list_display = ["who", "scope", "period", "cap", "warn_percent", "alerts", "is_active", "spend", "progress",
                    "resets", "status"]
    list_filter = ["scope", "period", "is_active"]
    search_fields = ["user__username", "key__prefix", "project__public_id", "project__name"]
    list_select_related = ["user", "key", "project"]
    autocomplete_fields = ["user", "key", "project"]
    readonly_fields = ["current_state"]

    def get_fields(self, request, obj=None):
        fields = ["scope", "user", "key", "project", "period", "limit_usd", "warn_percent", "alert_percents",
                  "is_active"]
        return fields + ["current_state"] if obj else fields

    def _state(self, obj):
        if not hasattr(obj, "_budget_state"):
            obj._budget_state = None if obj.is_default else state_of(obj)
        return obj._budget_state

    @admin.display(description="For")
    def who(self, obj):
        return "default (every user without their own)" if obj.is_default else obj.subject_label

    @admin.display(description="Alerts at")
    def alerts(self, obj):
        return ", ".join(f"{p}%" for p in obj.alert_percents) or "—"

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
