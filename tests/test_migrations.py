"""Migrations that change the ledger keep every existing total: a database with history, migrated
forward, holds the same numbers at every level, and the new counters start at zero."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE_REASONING = [("usage", "0005_rollup_state"), ("gateway", "0001_initial")]
OLD_COUNTERS = ("requests", "error_requests", "estimated_requests", "input_tokens", "cached_input_tokens",
                "cache_write_tokens", "output_tokens", "cost_nanos")
TABLES = ("usage_bucket_5min", "usage_bucket_hour", "usage_bucket_day", "usage_bucket_month")


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)


def totals(table, names):
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {', '.join(f'SUM({n})' for n in names)}, COUNT(*) FROM {table}")
        return cursor.fetchone()


@pytest.mark.django_db(transaction=True)
def test_adding_reasoning_tokens_keeps_every_total_and_adds_zeros():
    latest = MigrationExecutor(connection).loader.graph.leaf_nodes()
    migrate(BEFORE_REASONING)
    old = MigrationExecutor(connection).loader.project_state(BEFORE_REASONING).apps
    user = old.get_model("auth", "User").objects.create(username="ada")
    facade = old.get_model("gateway", "ModelFacade").objects.create(
        name="gpt-old", provider="openai", base_url="http://127.0.0.1:9/v1", upstream_model="gpt-4o-mini")
    with connection.cursor() as cursor:
        for level, table in enumerate(TABLES):
            for row in range(3):
                values = [1000 * level + 10 * row + i for i in range(len(OLD_COUNTERS))]
                cursor.execute(
                    f"INSERT INTO {table} (bucket_start, user_id, facade_id, {', '.join(OLD_COUNTERS)}) "
                    f"VALUES (%s, %s, %s, {', '.join(['%s'] * len(OLD_COUNTERS))})",
                    [f"2026-0{row + 1}-01 00:00:00+00:00" if connection.vendor == "postgresql"
                     else f"2026-0{row + 1}-01 00:00:00", user.pk, facade.pk, *values])
    before = {table: totals(table, OLD_COUNTERS) for table in TABLES}
    assert before["usage_bucket_day"] == (*(3 * (2000 + 10 + i) for i in range(len(OLD_COUNTERS))), 3)

    migrate(latest)
    for table in TABLES:
        assert totals(table, OLD_COUNTERS) == before[table]
        assert totals(table, ("reasoning_tokens",)) == (0, 3)
