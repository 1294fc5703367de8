"""Settings read from the environment, and the configuration system checks."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from codevector import checks, settings as project_settings

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


def test_check_deploy_warns_about_the_development_secret_key(tmp_path):
    env = {**os.environ, "DEBUG": "false", "USAGE_BUFFER_DIR": str(tmp_path)}
    env.pop("SECRET_KEY", None)
    result = subprocess.run([sys.executable, "manage.py", "check", "--deploy"], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    assert "codevector.W001" in result.stdout + result.stderr
