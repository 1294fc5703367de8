"""API-key authentication for the gateway: an in-process cache of usable keys by SHA-256 digest.

The cache is refreshed from the database in the background (last known good kept while the
database is down). A digest it does not know is looked up once in the database, so a new key
works at once, behind a short negative cache so random keys cannot load the database.
"""

import time
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from gateway.models import ApiKey, hash_key

NEGATIVE_CACHE_LIMIT = 10_000


@dataclass(frozen=True)
class KeyInfo:
    key_id: int
    user_id: int
    username: str
    prefix: str
    expires_at: datetime | None
    project_id: int  # fixed with the key: its spend counts against the project's budgets


def presented_key(headers: dict[str, str]) -> str | None:
    """The key from `Authorization: Bearer <key>` or `x-api-key: <key>`."""
    authorization = headers.get("authorization", "")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return headers.get("x-api-key", "").strip() or None


def _info(key: ApiKey) -> KeyInfo:
    return KeyInfo(key.pk, key.user_id, key.user.username, key.prefix, key.expires_at, key.project_id)


def load_usable_keys() -> dict[str, KeyInfo]:
    close_old_connections()
    return {key.digest: _info(key) for key in ApiKey.objects.usable().select_related("user")}


def load_key(digest: str) -> KeyInfo | None:
    close_old_connections()
    key = ApiKey.objects.find_usable(digest)
    return _info(key) if key else None


def touch_keys(key_ids: set[int]) -> None:
    close_old_connections()
    ApiKey.objects.filter(pk__in=key_ids).update(last_used_at=timezone.now())


class KeyLookup(NamedTuple):
    digest: str
    info: KeyInfo | None
    ask_database: bool  # unknown here, and the look-up budget allows asking the database


class KeyCache:
    def __init__(self):
        self._by_digest: dict[str, KeyInfo] = {}
        self._unknown: dict[str, float] = {}  # digest -> monotonic time until which it stays unknown
        self._used: set[int] = set()
        # A full bucket to start: a key created since the last refresh works at once in a new worker.
        self._tokens, self._tokens_at = float(settings.GATEWAY_KEY_LOOKUPS_PER_SECOND), time.monotonic()
        self.loaded = False

    def replace(self, keys: dict[str, KeyInfo]) -> None:
        self._by_digest, self.loaded = keys, True
        self._unknown.clear()

    def find(self, raw_key: str) -> KeyLookup:
        digest = hash_key(raw_key)
        info = self._by_digest.get(digest)
        if info is not None:
            if info.expires_at is not None and info.expires_at <= timezone.now():
                return KeyLookup(digest, None, False)
            return KeyLookup(digest, info, False)
        return KeyLookup(digest, None, self._unknown.get(digest, 0.0) < time.monotonic() and self._lookup_allowed())

    def _lookup_allowed(self) -> bool:
        """A token bucket over all unknown keys: random keys (each new to the negative cache) cannot
        send more than GATEWAY_KEY_LOOKUPS_PER_SECOND queries to the database; the rest get 401 until
        the next refresh brings new keys in."""
        now = time.monotonic()
        rate = settings.GATEWAY_KEY_LOOKUPS_PER_SECOND
        self._tokens = min(rate, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def learn(self, digest: str, info: KeyInfo | None) -> None:
        if info is not None:
            self._by_digest = {**self._by_digest, digest: info}
            return
        if len(self._unknown) >= NEGATIVE_CACHE_LIMIT:
            self._unknown.clear()
        self._unknown[digest] = time.monotonic() + settings.GATEWAY_NEGATIVE_CACHE_SECONDS

    def mark_used(self, key_id: int) -> None:
        self._used.add(key_id)

    def take_used(self) -> set[int]:
        used, self._used = self._used, set()
        return used
