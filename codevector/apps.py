from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class CodeVectorAdminConfig(admin_apps.AdminConfig):
    default = False
    default_site = "codevector.admin.CodeVectorAdminSite"


class CodeVectorConfig(AppConfig):
    default = True
    name = "codevector"
    verbose_name = "CodeVector"

    def ready(self):
        from codevector import checks  # noqa: F401  (registers the system checks)
