"""Who may see whose usage: one rule for the admin's usage pages and the API."""

from rest_framework.permissions import BasePermission, DjangoModelPermissions

from usage.models import FiveMinuteUsage

DASHBOARD_PERMISSION = "usage.view_usage_dashboard"


def sees_everyone(user) -> bool:
    """An active superuser, or active staff holding usage.view_usage_dashboard (by session or their
    own key), sees everyone's usage; anyone else only their own."""
    return bool(user and user.is_active and (user.is_superuser or (user.is_staff and user.has_perm(DASHBOARD_PERMISSION))))


class SeesEveryone(BasePermission):
    message = "This needs a staff account with the usage.view_usage_dashboard permission."

    def has_permission(self, request, view):
        return sees_everyone(request.user)


def project_model():
    """gateway.Project, reached through the usage rows' key (usage never imports gateway)."""
    return FiveMinuteUsage._meta.get_field("key").related_model._meta.get_field("project").related_model


def reads_project(user, project) -> bool:
    """Whoever sees everyone reads every project's usage; an active owner of a project reads that
    project's (every member's keys), whether or not they are staff. A member who is not an owner
    reads only their own usage (/api/me/usage/)."""
    if not (user and user.is_authenticated and user.is_active):
        return False
    owner = project.members.model.Role.OWNER
    return sees_everyone(user) or project.members.filter(user_id=user.pk, role=owner).exists()


class ReadsProject(BasePermission):
    message = ("Only the project's owners and staff with the usage.view_usage_dashboard permission may read a "
               "project's usage; a member reads their own at /api/me/usage/.")

    def has_object_permission(self, request, view, obj):
        return reads_project(request.user, obj)


class ManagesBudgets(DjangoModelPermissions):
    """Writes need the model permission the admin asks for (usage.add_budget for POST,
    change_budget for PUT/PATCH, delete_budget for DELETE); reads need nothing more than SeesEveryone."""

    message = "Changing budgets needs the usage.add_budget, usage.change_budget or usage.delete_budget permission."


class SeesEveryoneByKey(BasePermission):
    """The OpenAI-shaped usage and costs API's rule: an API key (as OpenAI's admin keys, never a
    session) of a user who sees everyone's usage."""

    message = ("This API key may not read the organization's usage: it needs the key of a superuser, or of "
               "staff with the usage.view_usage_dashboard permission.")

    def has_permission(self, request, view):
        return bool(request.user and request.user.is_authenticated and request.auth is not None
                    and sees_everyone(request.user))
