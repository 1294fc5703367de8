"""The usage pages of the admin: network-wide, per user, per API key, per project, and the leaderboard.

Wired by the admin site (codevector.admin, usage.admin) through `admin_view`, which already
requires an active staff member; each page also asks for the one usage permission.
"""

from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.utils import timezone

from usage.budgets import states as budgets
from usage.web import dashboard
from usage.reads import queries
from usage.web.permissions import sees_everyone
from usage.reserved import is_reserved, label
from usage.reads.buffer_overview import buffer_overview


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
        "projects": queries.by_project(window),
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
    group = request.GET.get("group")
    group = group if group in dashboard.LEADERBOARD_GROUPS else "user"
    page = dashboard.leaderboard_page(window, by, request.GET.get("page"), group)
    ctx = {
        **site.each_context(request),
        "title": {"user": "Leaderboard", "key": "Leaderboard of API keys", "project": "Leaderboard of projects"}[group],
        "window": window,
        "by": by,
        "group": group,
        "orders": dashboard.order_tabs(request.GET, by),
        "groups": dashboard.group_tabs(request.GET, group),
        "tabs": dashboard.window_tabs(request.GET, window.key),
        "page": page,
        "rows": [(row, dashboard.rank_change(row)) for row in page.object_list],
        "page_links": dashboard.page_links(request.GET, page),
    }
    return TemplateResponse(request, "admin/usage/leaderboard.html", ctx)


def user_usage_view(request, site, user, opts):
    _require_permission(request)
    window = dashboard.window_from(request.GET)
    panel = dashboard.panel(window, user_id=user.pk, with_keys=True)
    ctx = {
        **site.each_context(request),
        **panel,
        "title": f"Usage of {user.get_username()}",
        "opts": opts,
        "original": user,
        "tabs": dashboard.window_tabs(request.GET, window.key),
        "api_keys": dashboard.user_key_rows(panel["key_rows"], user),
        "budgets": budgets.states_for(user.pk, timezone.now()),
    }
    return TemplateResponse(request, "admin/usage/user.html", ctx)


def key_usage_view(request, site, key, opts):
    """One API key's usage (wired by gateway.admin.ApiKeyAdmin): the user page's panel, for the key."""
    _require_permission(request)
    window = dashboard.window_from(request.GET)
    reserved = is_reserved(key.digest, key.user_id)
    key_label = label(f"{key.prefix}…" + (f" ({key.name})" if key.name else ""), reserved=reserved)
    ctx = {
        **site.each_context(request),
        **dashboard.panel(window, key_id=key.pk),
        "title": f"Usage of the API key {key_label}" if not reserved else f"Usage of {key.user.get_username()} {key_label}",
        "opts": opts,
        "original": key,
        "key_label": key_label,
        "reserved": reserved,
        "tabs": dashboard.window_tabs(request.GET, window.key),
    }
    return TemplateResponse(request, "admin/usage/key.html", ctx)


def project_usage_view(request, site, project, opts):
    """One project's usage (wired by gateway.admin.ProjectAdmin): its keys' usage, in the user page's
    panel, with the usage per key and the members."""
    _require_permission(request)
    window = dashboard.window_from(request.GET)
    panel = dashboard.panel(window, project_id=project.pk, with_keys=True)
    ctx = {
        **site.each_context(request),
        **panel,
        "title": f"Usage of the project {project.name}",
        "opts": opts,
        "original": project,
        "tabs": dashboard.window_tabs(request.GET, window.key),
        "keys": panel["key_rows"],
        "members": dashboard.project_members(project),
        "budgets": dashboard.project_budgets(project.pk, timezone.now()),
    }
    return TemplateResponse(request, "admin/usage/project.html", ctx)
