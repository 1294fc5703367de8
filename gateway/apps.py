from django.apps import AppConfig
from django.apps import apps as global_apps
from django.db.models.signals import post_migrate


def ensure_default_project(sender, apps=global_apps, using="default", **kwargs):
    """The Default project is made by a migration; a flush (Django's TransactionTestCase) empties
    every table and then sends post_migrate (without the migrated state's apps), as for content
    types, so it is made again here."""
    try:
        apps.get_model("gateway", "Project")
    except LookupError:  # migrated back to before projects
        return
    from gateway.models import Project

    Project.objects.ensure_default(using)


class GatewayConfig(AppConfig):
    name = "gateway"
    verbose_name = "Gateway"

    def ready(self):
        post_migrate.connect(ensure_default_project, sender=self)
