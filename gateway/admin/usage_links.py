"""The usage page links of the key and project admins."""

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from usage.web.permissions import sees_everyone


class UsagePageLinks:
    """A model admin whose objects have a usage page (`<id>/usage/`, named `usage_url_name`): the
    change page links to it and the list gains a "usage" column, for staff who see everyone's usage."""

    usage_url_name = ""

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = {**(extra_context or {}), "shows_usage": sees_everyone(request.user)}
        return super().change_view(request, object_id, form_url, extra_context)

    def get_list_display(self, request):
        columns = super().get_list_display(request)
        return [*columns, "usage_link"] if sees_everyone(request.user) else columns

    @admin.display(description="Usage")
    def usage_link(self, obj):
        return format_html('<a href="{}">usage</a>', reverse(f"admin:{self.usage_url_name}", args=[obj.pk]))
