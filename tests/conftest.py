"""Shared fixtures: named personas instead of factories, and the database-vendor marks."""

import pytest
from django.contrib.auth.models import User
from django.db import connection

from gateway.models import ModelFacade


def pytest_collection_modifyitems(config, items):
    if connection.vendor == "postgresql":
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL (this run is on SQLite)")
    for item in items:
        if "postgres_only" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def alice(db):
    return User.objects.create_user("alice", "alice@example.com", "alice-password")


@pytest.fixture
def bob(db):
    return User.objects.create_user("bob", "bob@example.com", "bob-password")


@pytest.fixture
def gpt(db):
    """An OpenAI facade with gpt-4o-mini-like prices ($0.15 in, $0.075 cached, $0.60 out)."""
    return ModelFacade.objects.create(
        name="gpt-test",
        provider="openai",
        base_url="http://127.0.0.1:9/v1",
        upstream_model="gpt-4o-mini",
        input_price_micros=150_000,
        cached_input_price_micros=75_000,
        output_price_micros=600_000,
    )


@pytest.fixture
def claude(db):
    """An Anthropic facade with Sonnet-like prices ($3 in, $0.30 cache read, $3.75 cache write, $15 out)."""
    return ModelFacade.objects.create(
        name="claude-test",
        provider="anthropic",
        base_url="http://127.0.0.1:9",
        upstream_model="claude-sonnet-4-5",
        input_price_micros=3_000_000,
        cached_input_price_micros=300_000,
        cache_write_price_micros=3_750_000,
        output_price_micros=15_000_000,
    )


@pytest.fixture
def test_database_url(transactional_db):
    """A DATABASE_URL for the test database, for servers and writers started in subprocesses."""
    settings_dict = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{settings_dict['NAME']}"
    password = f":{settings_dict['PASSWORD']}" if settings_dict.get("PASSWORD") else ""
    return (f"postgres://{settings_dict['USER']}{password}@{settings_dict['HOST'] or '127.0.0.1'}:"
            f"{settings_dict['PORT'] or 5432}/{settings_dict['NAME']}")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
