"""The usage side of the admin: the user's change page shows the user's spend and links to their
usage page. Every usage page itself (the user's `<id>/usage/` too) is wired by usage.web.admin_urls.
auth's UserAdmin is replaced here (this module is discovered after auth's) by a subclass.
"""

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin

from usage.web import admin_budgets, dashboard  # noqa: F401  (admin_budgets registers Budget)
from usage.reads import queries
from usage.money import usd_for_people
from usage.web.permissions import sees_everyone

User = get_user_model()


class UsageUserAdmin(UserAdmin):
    change_form_template = "admin/usage/user_change_form.html"

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = dict(extra_context or {})
        if object_id and sees_everyone(request.user):
            period = queries.resolve_window(dashboard.DEFAULT_WINDOW)
            user = self.get_object(request, object_id)
            if user is not None:
                spend = queries.summary(period, user_id=user.pk).totals.spend_usd
                extra_context["usage_spend"] = {"label": dashboard.WINDOW_LABELS[period.key], "value": f"{spend:f}",
                                                "display": usd_for_people(spend)}
        return super().change_view(request, object_id, form_url, extra_context)


if admin.site.is_registered(User):
    admin.site.unregister(User)
admin.site.register(User, UsageUserAdmin)
