"""Drop the bucket tables' single-column indexes on user and key: each level's (user,
bucket_start) and (key, bucket_start) indexes serve every lookup they did.

Only the indexes go. Django's own AlterField would drop and re-add the foreign keys on
PostgreSQL (a full validation scan of the ledger under lock) and copy every table on SQLite."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

TABLES = {"fiveminuteusage": "usage_bucket_5min", "hourlyusage": "usage_bucket_hour",
          "dailyusage": "usage_bucket_day", "monthlyusage": "usage_bucket_month"}


def single_column_indexes(schema_editor):
    """(quoted name, quoted table, quoted column) of each index this migration drops, by Django's
    naming of the indexes it made for the foreign keys."""
    q = schema_editor.quote_name
    for table in TABLES.values():
        for column in ("user_id", "key_id"):
            yield q(schema_editor._create_index_name(table, [column], suffix="")), q(table), q(column)


def drop_indexes(apps, schema_editor):
    for name, _, _ in single_column_indexes(schema_editor):
        schema_editor.execute(f"DROP INDEX IF EXISTS {name}")


def create_indexes(apps, schema_editor):
    for name, table, column in single_column_indexes(schema_editor):
        schema_editor.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {table} ({column})")


def state(model_name):
    return [
        migrations.AlterField(model_name=model_name, name="key", field=models.ForeignKey(
            db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name="+", to="gateway.apikey")),
        migrations.AlterField(model_name=model_name, name="user", field=models.ForeignKey(
            db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name="+",
            to=settings.AUTH_USER_MODEL)),
    ]


class Migration(migrations.Migration):

    dependencies = [
        ("gateway", "0003_facade_kind"),
        ("usage", "0010_buffer_event_rejected"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[operation for model_name in TABLES for operation in state(model_name)],
            database_operations=[migrations.RunPython(drop_indexes, create_indexes)],
        ),
    ]
