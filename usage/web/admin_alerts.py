"""Budget alerts in the admin: what was decided, and where each delivery stands (sent, failing,
attempts, last error). Read-only: alerts are decided by usage.budgets.alerts, never by hand; "retry now"
makes chosen deliveries due at once. Imported by usage.apps."""

from django.contrib import admin, messages

from usage.budgets.alerts import retry_now
from usage.money import usd_exact
from usage.models import AlertDelivery, BudgetAlert

DELIVERY_FIELDS = ["channel", "target", "status", "attempts", "next_attempt_at", "last_error", "sent_at", "created_at"]


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class AlertDeliveryInline(admin.TabularInline):
    model = AlertDelivery
    fields = readonly_fields = DELIVERY_FIELDS
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(BudgetAlert)
class BudgetAlertAdmin(ReadOnlyAdmin):
    list_display = ["decided_at", "scope", "subject", "period", "period_start", "threshold", "spend", "cap",
                    "delivered"]
    list_filter = ["scope", "period", "threshold_percent"]
    search_fields = ["subject", "event_id"]
    date_hierarchy = "decided_at"
    fields = ["event_id", "budget", "scope", "subject", "period", "period_start", "threshold", "spend", "cap",
              "decided_at"]
    readonly_fields = fields
    inlines = [AlertDeliveryInline]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("deliveries")

    @admin.display(description="Threshold", ordering="threshold_percent")
    def threshold(self, obj):
        return f"{obj.threshold_percent}%"

    @admin.display(description="Spend (USD)", ordering="spend_nanos")
    def spend(self, obj):
        return usd_exact(obj.spend_nanos)

    @admin.display(description="Cap (USD)", ordering="limit_nanos")
    def cap(self, obj):
        return usd_exact(obj.limit_nanos)

    @admin.display(description="Delivered")
    def delivered(self, obj):
        deliveries = list(obj.deliveries.all())
        sent = sum(d.status == AlertDelivery.Status.SENT for d in deliveries)
        return f"{sent} of {len(deliveries)}"


@admin.register(AlertDelivery)
class AlertDeliveryAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "alert", "channel", "target", "status", "attempts", "next_attempt_at", "sent_at",
                    "short_error"]
    list_filter = ["status", "channel"]
    search_fields = ["target", "alert__subject", "alert__event_id"]
    list_select_related = ["alert"]
    fields = ["alert", *DELIVERY_FIELDS]
    readonly_fields = fields
    actions = ["retry_selected_now"]

    @admin.display(description="Last error")
    def short_error(self, obj):
        return obj.last_error[:120]

    def has_retry_permission(self, request):
        return request.user.has_perm(f"{self.opts.app_label}.change_{self.opts.model_name}")

    @admin.action(description="Retry the selected deliveries now", permissions=["retry"])
    def retry_selected_now(self, request, queryset):
        count = retry_now(queryset)
        self.message_user(request, f"{count} delivery(ies) will be retried by the next sweep (within a minute); "
                                   "those already sent or being sent are left alone.", messages.SUCCESS)
