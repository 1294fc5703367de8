"""The ledger's counters, declared once. Everything else derives from this list: the bucket tables'
columns (usage.models), the UPSERT and rollup statements (usage.sql), the delta (usage.ledger),
the read module's totals (usage.reads.queries) and the API's fields and schema (usage.web.api). Adding a
counter is one line here plus a migration.

The order is the order the API and its CSV files show them in.
"""

from dataclasses import dataclass, make_dataclass
from operator import attrgetter


@dataclass(frozen=True)
class Counter:
    name: str
    help: str = ""


COUNTER_DEFINITIONS = (
    Counter("requests"),
    Counter("input_tokens", "Every prompt token, cached and cache writes included."),
    Counter("cached_input_tokens"),
    Counter("cache_write_tokens", "Every cache write, both retentions."),
    Counter("cache_write_extended_tokens",
            "Of the cache writes, those with the longer retention (Anthropic's 1 hour, OpenAI's 12 hours)."),
    Counter("output_tokens", "Every output token, reasoning included."),
    Counter("reasoning_tokens", "Of the output tokens, those spent reasoning (0 where the provider does not say)."),
    Counter("web_search_calls", "Server-side web searches, billed per call."),
    Counter("file_search_calls", "Server-side file searches, billed per call."),
    Counter("error_requests"),
    Counter("estimated_requests"),
    Counter("cost_nanos", "Integer nanodollars."),
)
COUNTERS = tuple(counter.name for counter in COUNTER_DEFINITIONS)

# A frozen, keyword-only dataclass with one int field per counter, each 0 by default: the base of
# UsageDelta and Totals.
Counters = make_dataclass("Counters", [(name, int, 0) for name in COUNTERS], frozen=True, slots=True, kw_only=True)
Counters.__module__ = __name__


counter_values = attrgetter(*COUNTERS)  # counter_values(counters): their values, in COUNTERS' order (a tuple)

