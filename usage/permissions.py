"""Who may see whose usage: one rule for the admin's usage pages and the API."""

from rest_framework.permissions import BasePermission, DjangoModelPermissions

DASHBOARD_PERMISSION = "usage.view_usage_dashboard"


def sees_everyone(user) -> bool:
    """An active superuser, or active staff holding usage.view_usage_dashboard (by session or their
    own key), sees everyone's usage; anyone else only their own."""
    return bool(user and user.is_active and (user.is_superuser or (user.is_staff and user.has_perm(DASHBOARD_PERMISSION))))


class SeesEveryone(BasePermission):
    message = "This needs a staff account with the usage.view_usage_dashboard permission."

    def has_permission(self, request, view):
        return sees_everyone(request.user)


class ManagesBudgets(DjangoModelPermissions):
    """Writes need the model permission the admin asks for (usage.add_budget for POST,
    change_budget for PUT/PATCH, delete_budget for DELETE); reads need nothing more than SeesEveryone."""

    message = "Changing budgets needs the usage.add_budget, usage.change_budget or usage.delete_budget permission."
