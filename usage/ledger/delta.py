"""A usage delta: one request's counters, with where and when they belong, and how deltas merge
into 5-minute buckets (the ledger's finest grain)."""

from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, timedelta
from operator import add
from collections.abc import Iterable

from usage.counters import COUNTERS, Counters, counter_values

BUCKET_SECONDS = 300
BUCKET = timedelta(seconds=BUCKET_SECONDS)


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageDelta(Counters):
    """One request's counters (usage.counters), with where and when they belong."""

    id: str
    user_id: int
    facade_id: int
    at: datetime
    key_id: int | None = None  # None: the user's reserved key (usage from before per-key accounting)
    requests: int = 1

    def __post_init__(self):
        if self.at.tzinfo is None:
            raise ValueError("a usage delta needs a timezone-aware time")
        values = counter_values(self)
        if not all(type(value) is int for value in values):  # one pass; the message names the first culprit
            name, value = next((n, v) for n, v in zip(COUNTERS, values) if type(v) is not int)
            raise TypeError(f"{name} must be an int, not {type(value).__name__}")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["at"] = self.at.isoformat()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "UsageDelta":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["at"] = datetime.fromisoformat(values["at"])
        return cls(**values)


def five_minute_start(at: datetime) -> datetime:
    """The start of the 5-minute bucket holding `at`, in UTC.

    Every real UTC offset is a multiple of 5 minutes, so these boundaries are local boundaries
    in any time zone too.
    """
    utc = at.astimezone(UTC)
    return utc.replace(minute=utc.minute - utc.minute % 5, second=0, microsecond=0)


Key = tuple[datetime, int, int, int]  # bucket start, user, API key, facade


def merge_deltas(deltas: Iterable[UsageDelta]) -> dict[Key, list[int]]:
    """Sum deltas per bucket key, in key order (a fixed lock order: no deadlocks between writers)."""
    merged: dict[Key, list[int]] = {}
    start = end = None  # the last delta's bucket: a batch's deltas nearly all share one
    for delta in deltas:
        if delta.key_id is None:
            raise ValueError(f"delta {delta.id} has no API key: resolve it with with_reserved_keys() first")
        if start is None or not start <= delta.at < end:
            start = five_minute_start(delta.at)
            end = start + BUCKET
        key = (start, delta.user_id, delta.key_id, delta.facade_id)
        counters = counter_values(delta)
        known = merged.get(key)
        merged[key] = list(counters) if known is None else list(map(add, known, counters))
    return dict(sorted(merged.items())) if len(merged) > 1 else merged

