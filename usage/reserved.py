"""The reserved key: usage without a key belongs to one reserved, never-usable key of its user.

Usage recorded before per-key accounting, and deltas buffered or logged without a key, are counted
under it: revoked from birth, its digest not a SHA-256 hex digest (so no presented key can match
it), its prefix not `cvk_` (so no real key's prefix can equal it). The ledger makes these rows by
raw SQL (usage.sql.ensure_reserved_keys), as the migration that added the key to the buckets did;
every page, API and command names such a key through `label()`."""

RESERVED_KEY_NAME = "before per-key accounting"


def reserved_key_digest(user_id: int) -> str:
    return f"reserved:{user_id}"


def reserved_key_prefix(user_id: int) -> str:
    return f"pre-{user_id}"


def is_reserved(digest: str, user_id: int) -> bool:
    return digest == reserved_key_digest(user_id)


def label(prefix: str, name: str = "", reserved: bool = False) -> str:
    """How a key is named where its usage is shown: the reserved key by what it holds, any other
    by its name, or its prefix when it has none."""
    return RESERVED_KEY_NAME if reserved else (name or prefix)
