"""The usage side of the admin: each user's usage page and its link from the user's change page.

The network-wide page and the leaderboard are wired by the admin site itself
(codevector.admin.CodeVectorAdminSite.get_urls), since /admin/usage/ takes the place of this
app's index. auth's UserAdmin is replaced here (this module is discovered after auth's) by a
subclass that adds `<id>/usage/`, the way UserAdmin adds `<id>/password/`.
"""

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.shortcuts import get_object_or_404
from django.urls import path

from usage.web import admin_budgets, dashboard, views  # noqa: F401  (admin_budgets registers Budget)
from usage.reads import queries
from usage.money import usd_for_people
from usage.web.permissions import sees_everyone

User = get_user_model()


class UsageUserAdmin(UserAdmin):
    change_form_template = "admin/usage/user_change_form.html"

    def get_urls(self):
        return [
            path("<int:id>/usage/", self.admin_site.admin_view(self.usage_view), name="auth_user_usage"),
            *super().get_urls(),
        ]

    def usage_view(self, request, id):
        user = get_object_or_404(self.get_queryset(request), pk=id)
        return views.user_usage_view(request, self.admin_site, user, self.opts)

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
