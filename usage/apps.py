from django.apps import AppConfig
from django.db import connections
from django.db.models.signals import post_migrate


def sync_schedules_after_migrate(sender, using="default", **kwargs):
    """Our django-q2 schedules exist once `migrate` has run (and again after a test's flush, which
    sends post_migrate too): budget alerts must not wait for someone to run setup_schedules."""
    from django_q.models import Schedule

    from usage.tasks import sync_schedules

    if Schedule._meta.db_table not in connections[using].introspection.table_names():
        return  # django_q migrated back (or not yet): nothing to sync into
    sync_schedules(using)


class UsageConfig(AppConfig):
    name = "usage"
    verbose_name = "Usage"

    def ready(self):
        from usage.web import admin_alerts  # noqa: F401 (registers the alert models in the admin)

        post_migrate.connect(sync_schedules_after_migrate, sender=self)
