"""Shared fixtures: named personas instead of factories, and the database-vendor marks."""

import pytest
from django.contrib.auth.models import User
from django.db import connection

from gateway.models import ModelFacade
from tests.support.servers import listening_socket, port_of


def pytest_configure(config):
    config.addinivalue_line("markers", "sqlite_only: SQLite's own behaviour; not collected on a PostgreSQL run")


def pytest_collection_modifyitems(config, items):
    group_for_xdist(config, items)
    if connection.vendor == "postgresql":
        # Deselected, not skipped: under CI=true a skip is a failure (tests/support/ci.py), and a
        # SQLite-only test has nothing to run on PostgreSQL.
        kept = [item for item in items if "sqlite_only" not in item.keywords]
        if len(kept) != len(items):
            config.hook.pytest_deselected(items=[item for item in items if "sqlite_only" in item.keywords])
            items[:] = kept
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL (this run is on SQLite)")
    for item in items:
        if "postgres_only" in item.keywords:
            item.add_marker(skip)


def group_for_xdist(config, items):
    """`--dist loadgroup` (tests/run.sh) sends tests of one `xdist_group` to one worker, by a
    `@<group>` suffix pytest-xdist 3.8 adds to each node id on the worker. It writes `item._nodeid`,
    which pytest 9 no longer reads (the id lives in `item._id`): the suffix was lost, and the fault
    tests that start clusters and gunicorns ran two at once. Added here where xdist's did not take."""
    if not config.getoption("loadgroup", default=False):
        return
    for item in items:
        groups = sorted({str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                         for mark in item.iter_markers("xdist_group")})
        suffix = "@" + "_".join(groups)
        if not groups or item.nodeid.endswith(suffix):
            continue
        if hasattr(item, "_id"):
            from _pytest.nodeid import NodeId

            item._id = NodeId.parse(item.nodeid + suffix)
        else:
            item._nodeid = item.nodeid + suffix


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




# --- real servers on loopback: the mock upstream and the gateway, in threads of this process ---


class ThreadServer:
    """Runs an asyncio server in a thread with its own loop."""

    def __init__(self):
        import asyncio
        import threading

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coroutine, timeout: float = 30):
        import asyncio

        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self):
        """Cancel what the server left running (a handler still sleeping, say), then stop and close
        the loop, so nothing is destroyed while pending."""
        import asyncio

        async def cancel_the_rest():
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.call(cancel_the_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="session")
def mock_upstream():
    """The mock upstream on a free port; `.mock.seen` lists the requests it received."""
    from aiohttp import web

    from gateway.mock_upstream import MockUpstream

    server = ThreadServer()
    server.mock = MockUpstream()
    sock = listening_socket()
    port = port_of(sock)
    runner = web.AppRunner(server.mock.app(), access_log=None, shutdown_timeout=1)
    server.call(runner.setup())
    server.call(web.SockSite(runner, sock).start())
    server.url = f"http://127.0.0.1:{port}"
    yield server
    server.call(runner.cleanup())
    server.close()


class GatewayServer:
    def __init__(self, url, app, uvicorn_server, thread):
        self.url, self.app, self._server, self._thread = url, app, uvicorn_server, thread

    def refresh(self):
        """Reload keys, facades and budgets now instead of waiting for the background refresh."""
        import asyncio

        asyncio.run_coroutine_threadsafe(self.app.refresh(), self.app.loop).result(30)

    def stop(self):
        self._server.should_exit = True
        self._thread.join(30)


@pytest.fixture(scope="session")
def gateway_server(django_db_setup, django_db_blocker):
    """codevector.asgi under uvicorn in a thread, on the test database (transactional tests only:
    the gateway writes through connections of its own)."""
    import threading
    import time

    import uvicorn

    from codevector.asgi import application, gateway_application

    sock = listening_socket()
    port = port_of(sock)
    config = uvicorn.Config(application, lifespan="on", log_level="warning", loop="asyncio",
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    with django_db_blocker.unblock():
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.05)
    gateway = GatewayServer(f"http://127.0.0.1:{port}", gateway_application, server, thread)
    yield gateway
    with django_db_blocker.unblock():
        gateway.stop()
        end_sessions_left_by_the_server()


def end_sessions_left_by_the_server():
    """The stopped server's threads (Django's sync thread with CONN_MAX_AGE, the cache refresh)
    keep PostgreSQL sessions open; end them, or the test database cannot be dropped."""
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                           " WHERE datname = current_database() AND pid <> pg_backend_pid()")
