"""The usage pages of the admin: network-wide, per user, and the leaderboard.

Wired by the admin site (codevector.admin, usage.admin) through `admin_view`, which already
requires an active staff member; each page also asks for the one usage permission.
"""

from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.utils import timezone

from usage import budgets, dashboard
from usage.permissions import sees_everyone
from usage.store import buffer_overview


def _require_permission(request):
    if not sees_everyone(request.user):
        raise PermissionDenied("Viewing usage needs the permission “Can view usage dashboards”.")


def dashboard_view(request, site):
    _require_permission(request)
    window = dashboard.window_from(request.GET)
    ctx = {
        **site.each_context(request),
        **dashboard.panel(window),
        "title": "Usage",
        "tabs": dashboard.window_tabs(request.GET, window.key),
        "degraded": dashboard.degraded_events(window),
        "buffer": buffer_overview(since=window.start),
    }
    return TemplateResponse(request, "admin/usage/dashboard.html", ctx)


def leaderboard_view(request, site):
    _require_permission(request)
    window = dashboard.window_from(request.GET)
    by = request.GET.get("by")
    by = by if by in dashboard.LEADERBOARD_ORDERS else "tokens"
    page = dashboard.leaderboard_page(window, by, request.GET.get("page"))
    ctx = {
        **site.each_context(request),
        "title": "Leaderboard",
        "window": window,
        "by": by,
        "orders": dashboard.order_tabs(request.GET, by),
        "tabs": dashboard.window_tabs(request.GET, window.key),
        "page": page,
        "rows": [(row, dashboard.rank_change(row)) for row in page.object_list],
        "page_links": dashboard.page_links(request.GET, page),
    }
    return TemplateResponse(request, "admin/usage/leaderboard.html", ctx)


def user_usage_view(request, site, user, opts):
    _require_permission(request)
    window = dashboard.window_from(request.GET)
    ctx = {
        **site.each_context(request),
        **dashboard.panel(window, user_id=user.pk),
        "title": f"Usage of {user.get_username()}",
        "opts": opts,
        "original": user,
        "tabs": dashboard.window_tabs(request.GET, window.key),
        "api_keys": user.api_keys.order_by("-created_at"),
        "budgets": budgets.states_for(user.pk, timezone.now()),
    }
    return TemplateResponse(request, "admin/usage/user.html", ctx)
