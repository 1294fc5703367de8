"""What `make run` sets up on a fresh checkout: an admin account, the demo facades and a demo key.

Secrets made here are for local use only and are kept in files under var/ (git-ignored), so a
second `make run` shows the same credentials instead of creating new ones.
"""

import secrets
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model

from codevector.demo import ensure_demo_facades
from gateway.models import ApiKey, hash_key

ADMIN_USERNAME = "admin"


@dataclass
class LocalSetup:
    username: str | None
    password: str | None
    new_api_key: str | None  # shown once, when created; afterwards only its file is named
    facades: list


def _secret_file(name: str) -> Path:
    return settings.VAR_DIR / name


def _read(path: Path) -> str | None:
    return path.read_text().strip() if path.exists() else None


def _write_private(path: Path, value: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(value + "\n")


def set_up_local(mock_url: str) -> LocalSetup:
    User = get_user_model()
    password_file = _secret_file("admin-password.txt")
    username = password = None
    if not User.objects.filter(is_superuser=True).exists():
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser(ADMIN_USERNAME, "admin@localhost", password)
        _write_private(password_file, password)
        username = ADMIN_USERNAME
    elif User.objects.filter(username=ADMIN_USERNAME, is_superuser=True).exists():
        username, password = ADMIN_USERNAME, _read(password_file)

    key_file = _secret_file("demo-api-key.txt")
    known_key = _read(key_file)
    new_api_key = None
    admin = User.objects.filter(username=ADMIN_USERNAME).first()
    if admin and (known_key is None or not ApiKey.objects.filter(digest=hash_key(known_key)).exists()):
        _, new_api_key = ApiKey.objects.create_key(admin, name="demo (make run)")
        _write_private(key_file, new_api_key)
    return LocalSetup(username, password, new_api_key, ensure_demo_facades(mock_url))
