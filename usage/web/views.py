"""The usage pages of the admin: network-wide, per user, per API key, per project, and the leaderboard.

Wired by usage.web.admin_urls through the admin site's `admin_view`, which already requires an
active staff member; each page also asks for the one usage permission.
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


def _object_page(request, site, opts, original, title: str, **whose) -> dict:
    """What every object's usage page shows (a user's, an API key's, a project's): the panel of the
    object's usage (`whose`: dashboard.panel's user_id, key_id or project_id, and with_keys) for the
    period the tabs chose, under the object's breadcrumbs."""
    _require_permission(request)
    window = dashboard.window_from(request.GET)
    return {
        **site.each_context(request),
        **dashboard.panel(window, **whose),
        "title": title,
        "opts": opts,
        "original": original,
        "tabs": dashboard.window_tabs(request.GET, window.key),
    }


def user_usage_view(request, site, user, opts):
    ctx = _object_page(request, site, opts, user, f"Usage of {user.get_username()}", user_id=user.pk, with_keys=True)
    ctx["api_keys"] = dashboard.user_key_rows(ctx["key_rows"], user)
    ctx["budgets"] = budgets.states_for(user.pk, timezone.now())
    return TemplateResponse(request, "admin/usage/user.html", ctx)


def key_usage_view(request, site, key, opts):
    """One API key's usage: the user page's panel, for the key."""
    reserved = is_reserved(key.digest, key.user_id)
    key_label = label(f"{key.prefix}…" + (f" ({key.name})" if key.name else ""), reserved=reserved)
    title = f"Usage of {key.user.get_username()} {key_label}" if reserved else f"Usage of the API key {key_label}"
    ctx = _object_page(request, site, opts, key, title, key_id=key.pk)
    ctx["key_label"], ctx["reserved"] = key_label, reserved
    return TemplateResponse(request, "admin/usage/key.html", ctx)


def project_usage_view(request, site, project, opts):
    """One project's usage (its keys' usage), in the user page's panel, with the usage per key and the
    members."""
    ctx = _object_page(request, site, opts, project, f"Usage of the project {project.name}", project_id=project.pk,
                       with_keys=True)
    ctx["keys"] = ctx["key_rows"]
    ctx["members"] = dashboard.project_members(project)
    ctx["budgets"] = dashboard.project_budgets(project.pk, timezone.now())
    return TemplateResponse(request, "admin/usage/project.html", ctx)
