"""Settings read from the environment, and the configuration system checks."""

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from codevector import checks, settings as project_settings
from gateway.models import ModelFacade

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "helper, name, raw, message",
    [
        (project_settings.env_bool, "DEBUG", "maybe", "true or false"),
        (project_settings.env_int, "GATEWAY_MAX_BODY_BYTES", "10MB", "whole number"),
        (project_settings.env_float, "GATEWAY_READ_TIMEOUT", "nan", "finite"),
        (project_settings.env_float, "GATEWAY_READ_TIMEOUT", "-1", "finite number >= 0"),
    ],
)
def test_typed_env_helpers_refuse_bad_values_naming_the_variable(monkeypatch, helper, name, raw, message):
    monkeypatch.setenv(name, raw)
    with pytest.raises(ImproperlyConfigured, match=name) as info:
        helper(name, 1)
    assert message in str(info.value)


def test_an_unknown_time_zone_or_database_is_refused(monkeypatch):
    monkeypatch.setenv("TIME_ZONE", "Mars/Olympus")
    with pytest.raises(ImproperlyConfigured, match="IANA"):
        project_settings.env_timezone("TIME_ZONE", "UTC")
    monkeypatch.setenv("DATABASE_URL", "mysql://root@localhost/x")
    with pytest.raises(ImproperlyConfigured, match="PostgreSQL or SQLite"):
        project_settings.env_database("DATABASE_URL", "sqlite:///x")


def test_sqlite_gets_wal_a_busy_timeout_and_a_file_test_database(monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    config = project_settings.env_database("DATABASE_URL", "sqlite:////tmp/x.sqlite3")
    assert "journal_mode=WAL" in config["OPTIONS"]["init_command"]
    assert config["OPTIONS"]["timeout"] == 30
    assert config["TEST"]["NAME"].endswith(".sqlite3")


def test_an_unwritable_buffer_directory_is_a_warning(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    with override_settings(USAGE_BUFFER_DIR=blocked / "buffer"):
        problems = checks.check_usage_buffer_dir(None)
    assert [(p.id, p.level) for p in problems] == [("codevector.W002", 30)]
    with override_settings(USAGE_BUFFER_DIR=tmp_path / "buffer"):
        assert checks.check_usage_buffer_dir(None) == []


def test_check_deploy_passes_with_debug_off_and_real_settings(tmp_path):
    env = {
        **os.environ,
        "DEBUG": "false",
        "SECRET_KEY": "k" * 20 + "ZQx7-u1WmP0aLr9sVbN3cT5yE8gH2jK4fD6",
        "HTTPS": "true",
        "SECURE_HSTS_SECONDS": "31536000",
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
        "SECURE_HSTS_PRELOAD": "true",
        "USAGE_BUFFER_DIR": str(tmp_path),
    }
    result = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_deploy_with_the_readmes_production_settings_prints_no_warning(tmp_path):
    """The README's Deploying steps: SECRET_KEY, HTTPS=true and TRUST_X_FORWARDED_PROTO=true, nothing
    about HSTS (a year by default over HTTPS; sub-domains and preload are the operator's call)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SECURE_", "DEBUG"))}
    env.update({"SECRET_KEY": "k" * 20 + "ZQx7-u1WmP0aLr9sVbN3cT5yE8gH2jK4fD6", "HTTPS": "true",
                "TRUST_X_FORWARDED_PROTO": "true", "USAGE_BUFFER_DIR": str(tmp_path),
                "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"})
    result = subprocess.run([sys.executable, "manage.py", "check", "--deploy"], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout, result.stdout + result.stderr


def test_check_warns_about_a_missing_secret_key(tmp_path):
    env = {**os.environ, "DEBUG": "false", "USAGE_BUFFER_DIR": str(tmp_path)}
    env.pop("SECRET_KEY", None)
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    assert "codevector.W001" in result.stdout + result.stderr and "SECRET_KEY is not set" in result.stderr


def test_without_a_secret_key_gunicorn_exits_before_anything_listens(tmp_path):
    """Catches the published development key in production (it signed sessions whenever SECRET_KEY
    was unset) and a port left open while workers fail: the README's command line exits at once."""
    env = {**os.environ, "DEBUG": "false", "USAGE_BUFFER_DIR": str(tmp_path)}
    env.pop("SECRET_KEY", None)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "gunicorn", "codevector.asgi:application", "-k",
                                "uvicorn_worker.UvicornWorker", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    listened = False
    while process.poll() is None:
        with socket.socket() as client:
            listened = listened or client.connect_ex(("127.0.0.1", port)) == 0
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 1 and not listened
    ours = [line for line in stderr.splitlines() if not line.startswith("[")]  # gunicorn's own log lines
    assert ours == ["codevector: SECRET_KEY is not set: set it to a long random value, e.g. "
                    "SECRET_KEY=$(python3 -c 'import secrets; print(secrets.token_urlsafe(50))')"]


@pytest.mark.django_db
def test_a_facade_with_a_credential_variable_outside_the_allowlist_is_a_warning_and_a_deploy_error(gpt):
    ModelFacade.objects.filter(pk=gpt.pk).update(api_key_env="DATABASE_URL")  # past clean(): an old row
    [warning] = checks.check_facade_credentials(None)
    [error] = checks.check_facade_credentials_deploy(None)
    assert (warning.id, error.id, warning.level < error.level) == ("codevector.W003", "codevector.E003", True)
    assert "Facade 'gpt-test': DATABASE_URL is not an upstream credential variable" in warning.msg
    assert "create_facade gpt-test --api-key-env CODEVECTOR_UPSTREAM_DATABASE_URL" in warning.hint
    ModelFacade.objects.filter(pk=gpt.pk).update(api_key_env="CODEVECTOR_UPSTREAM_OPENAI")
    assert checks.check_facade_credentials(None) == []


def test_files_holding_usage_or_credentials_are_created_private(tmp_path):
    """Catches world-readable dead letters and databases (issue #27): the buffer's files were 0600,
    the dead-letter log and the SQLite database were not."""
    from usage.degraded.deadletter import reject
    from usage.ledger.delta import UsageDelta

    os.umask(0o022)
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.sqlite3'}", "USAGE_BUFFER_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    buffer_dir = tmp_path / "buffer"
    reject([UsageDelta(id="d1", user_id=1, facade_id=1, at=__import__("datetime").datetime.now().astimezone())],
           "a test", buffer_dir)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode)
             for path in [tmp_path / "fresh.sqlite3", buffer_dir, buffer_dir / "quarantine",
                          *(buffer_dir / "quarantine").glob("rejected-*.log")]}
    assert modes == {"fresh.sqlite3": 0o600, "buffer": 0o700, "quarantine": 0o700,
                     next(iter((buffer_dir / "quarantine").glob("*.log"))).name: 0o600}
