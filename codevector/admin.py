from django.contrib import admin
from django.urls import reverse


class CodeVectorAdminSite(admin.AdminSite):
    site_header = "CodeVector"
    site_title = "CodeVector admin"
    index_title = "Gateway administration"

    def get_urls(self):
        # Imported here: this module is loaded while the admin app starts, before the models.
        from usage.web.admin_urls import usage_admin_urls

        return [*usage_admin_urls(self), *super().get_urls()]  # first: see usage.web.admin_urls

    def get_app_list(self, request, app_label=None):
        """The usage pages join the navigation (index and sidebar) as the usage app's first rows."""
        from usage.web.permissions import sees_everyone  # as above: loaded before the models

        app_list = super().get_app_list(request, app_label)
        if app_label not in (None, "usage") or not sees_everyone(request.user):
            return app_list
        usage_app = next((app for app in app_list if app["app_label"] == "usage"), None)
        if usage_app is None:
            usage_app = {"name": "Usage", "app_label": "usage", "app_url": reverse("admin:usage_dashboard"),
                         "has_module_perms": True, "models": []}
            app_list.append(usage_app)
            app_list.sort(key=lambda app: app["name"].lower())
        usage_app["models"][:0] = [
            self._page_entry("Dashboard", "UsageDashboard", reverse("admin:usage_dashboard", current_app=self.name)),
            self._page_entry("Leaderboard", "UsageLeaderboard",
                             reverse("admin:usage_leaderboard", current_app=self.name)),
        ]
        return app_list

    @staticmethod
    def _page_entry(name, object_name, url):
        return {"name": name, "object_name": object_name, "perms": {"view": True}, "admin_url": url,
                "add_url": None, "view_only": True}
