"""Every usage page of the admin, declared in one place: the network-wide page, the leaderboard,
and the usage page of a user, an API key and a project.

An object's page sits beside its change page (`<app>/<model>/<id>/usage/`, named
`<app>_<model>_usage`), the way UserAdmin puts `<id>/password/`. The object is looked up through
its registered ModelAdmin's queryset, so who may open which object stays the admin's rule. The
admin site (codevector.admin) puts these before its own URLs: /admin/usage/ takes the place of the
usage app's index, and `<id>/usage/` would otherwise be read as an object id by the model's admin.
"""

from django.contrib.auth import get_user_model
from django.shortcuts import get_object_or_404
from django.urls import URLPattern, path

from usage.models import FiveMinuteUsage
from usage.web import views
from usage.web.permissions import project_model


def usage_admin_urls(site) -> list[URLPattern]:
    return [
        path("usage/", site.admin_view(lambda request: views.dashboard_view(request, site)), name="usage_dashboard"),
        path("usage/leaderboard/", site.admin_view(lambda request: views.leaderboard_view(request, site)),
             name="usage_leaderboard"),
        object_usage_url(site, get_user_model(), views.user_usage_view),
        # gateway.ApiKey, reached through the usage rows' key (usage never imports gateway)
        object_usage_url(site, FiveMinuteUsage._meta.get_field("key").related_model, views.key_usage_view,
                         related=["user"]),
        object_usage_url(site, project_model(), views.project_usage_view),
    ]


def object_usage_url(site, model, view, related=()) -> URLPattern:
    """`view(request, site, obj, opts)` at the object's `<id>/usage/`; `related`: what the page
    shows of the object's foreign keys, fetched with it."""
    opts = model._meta

    def usage_page(request, id):
        model_admin = site._registry[model]
        objects = model_admin.get_queryset(request)
        obj = get_object_or_404(objects.select_related(*related) if related else objects, pk=id)
        return view(request, site, obj, model_admin.opts)

    return path(f"{opts.app_label}/{opts.model_name}/<int:id>/usage/", site.admin_view(usage_page),
                name=f"{opts.app_label}_{opts.model_name}_usage")
