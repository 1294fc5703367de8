import os
import stat

from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps
from django.db.backends.signals import connection_created


class CodeVectorAdminConfig(admin_apps.AdminConfig):
    default = False
    default_site = "codevector.admin.CodeVectorAdminSite"


def keep_sqlite_files_private(sender, connection, **kwargs):
    """The SQLite database holds usage and key digests: owner-only, like the disk buffer. SQLite
    creates it (and its WAL files) with the process's umask, usually world-readable."""
    if connection.vendor != "sqlite":
        return
    name = str(connection.settings_dict["NAME"])
    for path in (name, name + "-wal", name + "-shm"):
        try:
            if os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                os.chmod(path, 0o600)
        except OSError:  # :memory:, or a WAL file not there
            pass


class CodeVectorConfig(AppConfig):
    default = True
    name = "codevector"
    verbose_name = "CodeVector"

    def ready(self):
        from codevector import checks  # noqa: F401  (registers the system checks)

        connection_created.connect(keep_sqlite_files_private, dispatch_uid="codevector-private-sqlite")
