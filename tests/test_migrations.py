"""Migrations that change the ledger keep every existing row: a database with history, migrated
forward, holds the same numbers in the same bucket for the same user at every level (compared row by
row, so usage moved between users or buckets is caught, not only usage lost), and the new counters
start at zero."""

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


def rows(table, names, key=("bucket_start", "user_id")):
    """{(bucket start as text, user, ...): (counters...)}: one entry per row (no two rows share a key here)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {', '.join(key)}, {', '.join(names)} FROM {table}")
        found = cursor.fetchall()
    as_text = {row[: len(key)]: row[len(key):] for row in found}
    assert len(as_text) == len(found)
    return {(str(k[0])[:19], *k[1:]): v for k, v in as_text.items()}


@pytest.mark.django_db(transaction=True)
def test_adding_reasoning_tokens_keeps_every_total_and_adds_zeros():
    latest = MigrationExecutor(connection).loader.graph.leaf_nodes()
    migrate(BEFORE_REASONING)
    old = MigrationExecutor(connection).loader.project_state(BEFORE_REASONING).apps
    user = old.get_model("auth", "User").objects.create(username="ada")
    facade = old.get_model("gateway", "ModelFacade").objects.create(
        name="gpt-old", provider="openai", base_url="http://127.0.0.1:9/v1", upstream_model="gpt-4o-mini")
    inserted = {table: {} for table in TABLES}
    with connection.cursor() as cursor:
        for level, table in enumerate(TABLES):
            for row in range(3):
                values = tuple(1000 * level + 10 * row + i for i in range(len(OLD_COUNTERS)))
                cursor.execute(
                    f"INSERT INTO {table} (bucket_start, user_id, facade_id, {', '.join(OLD_COUNTERS)}) "
                    f"VALUES (%s, %s, %s, {', '.join(['%s'] * len(OLD_COUNTERS))})",
                    [f"2026-0{row + 1}-01 00:00:00+00:00" if connection.vendor == "postgresql"
                     else f"2026-0{row + 1}-01 00:00:00", user.pk, facade.pk, *values])
                inserted[table][(f"2026-0{row + 1}-01 00:00:00", user.pk)] = values
    assert {table: rows(table, OLD_COUNTERS) for table in TABLES} == inserted

    migrate(latest)
    for table in TABLES:
        assert rows(table, OLD_COUNTERS) == inserted[table]
        assert rows(table, ("reasoning_tokens",)) == {key: (0,) for key in inserted[table]}


BEFORE_KEYS = [("usage", "0006_reasoning_tokens"), ("gateway", "0001_initial")]
COUNTERS_WITH_REASONING = (*OLD_COUNTERS, "reasoning_tokens")


@pytest.mark.django_db(transaction=True)
def test_per_key_accounting_moves_history_to_a_reserved_key_per_user_keeping_every_total():
    latest = MigrationExecutor(connection).loader.graph.leaf_nodes()
    migrate(BEFORE_KEYS)
    old = MigrationExecutor(connection).loader.project_state(BEFORE_KEYS).apps
    users = [old.get_model("auth", "User").objects.create(username=name) for name in ("ada", "grace")]
    facade = old.get_model("gateway", "ModelFacade").objects.create(
        name="gpt-old", provider="openai", base_url="http://127.0.0.1:9/v1", upstream_model="gpt-4o-mini")
    old.get_model("gateway", "ApiKey").objects.create(user=users[0], name="laptop", prefix="cvk_abcdefgh",
                                                      digest="d" * 64)
    inserted = {table: {} for table in TABLES}
    with connection.cursor() as cursor:
        for level, table in enumerate(TABLES):
            for row in range(4):
                values = tuple(1000 * level + 10 * row + i for i in range(len(COUNTERS_WITH_REASONING)))
                day = f"2026-0{row // 2 + 1}-0{row % 2 + 1} 00:00:00"
                cursor.execute(
                    f"INSERT INTO {table} (bucket_start, user_id, facade_id, {', '.join(COUNTERS_WITH_REASONING)}) "
                    f"VALUES (%s, %s, %s, {', '.join(['%s'] * len(COUNTERS_WITH_REASONING))})",
                    [day + ("+00:00" if connection.vendor == "postgresql" else ""), users[row % 2].pk, facade.pk,
                     *values])
                inserted[table][(day, users[row % 2].pk)] = values
    assert {table: rows(table, COUNTERS_WITH_REASONING) for table in TABLES} == inserted

    migrate(latest)
    from gateway.models import ApiKey

    reserved = {key.user_id: key for key in ApiKey.objects.filter(name="before per-key accounting")}
    assert sorted(reserved) == sorted(u.pk for u in users)
    assert all(key.prefix == f"pre-{key.user_id}" and key.revoked_at is not None and not key.is_usable()
               for key in reserved.values())
    assert not ApiKey.objects.usable().filter(pk__in=[k.pk for k in reserved.values()]).exists()
    for table in TABLES:
        # Each row kept, in its bucket, with its user, now on that user's reserved key.
        assert rows(table, COUNTERS_WITH_REASONING, key=("bucket_start", "user_id", "key_id")) == {
            (day, user_id, reserved[user_id].pk): values for (day, user_id), values in inserted[table].items()}
    # The key is NOT NULL now: a NULL key could never conflict, so a row without one is refused.
    from django.db import IntegrityError, transaction

    with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("INSERT INTO usage_bucket_5min (bucket_start, user_id, facade_id, requests) "
                       "VALUES (%s, %s, %s, 1)", ["2026-03-01 00:00:00", users[0].pk, facade.pk])


def bucket_indexes():
    """{table: sorted column lists of its plain (non-unique, non-primary) indexes}."""
    with connection.cursor() as cursor:
        found = {}
        for table in TABLES:
            constraints = connection.introspection.get_constraints(cursor, table)
            found[table] = sorted(c["columns"] for c in constraints.values()
                                  if c["index"] and not c["unique"] and not c["primary_key"])
        return found


@pytest.mark.django_db(transaction=True)
def test_the_bucket_tables_index_user_and_key_once_and_the_migration_reverses():
    latest = MigrationExecutor(connection).loader.graph.leaf_nodes()
    covered = [["facade_id"], ["key_id", "bucket_start"], ["user_id", "bucket_start"]]
    assert bucket_indexes() == {table: covered for table in TABLES}
    try:
        migrate([("usage", "0010_buffer_event_rejected")])
        assert bucket_indexes() == {table: sorted([*covered, ["key_id"], ["user_id"]]) for table in TABLES}
    finally:
        migrate(latest)
    assert bucket_indexes() == {table: covered for table in TABLES}
