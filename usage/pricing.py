"""Cost of a request as the provider bills it: quantities x prices, in exact integer arithmetic,
rounded once (half to even) to nanodollars.

A facade's `Prices` is a base `PriceSet`, long-context tiers over it, and named variants (service
tiers, speeds), each a full `PriceSet` with tiers of its own. Everything is validated and indexed
when a `Prices` is built (when the facade cache refreshes), so the per-request work in
`cost_nanos` is a selection and a handful of integer products.

Units: token prices are integer micro-USD per million tokens (1e-12 USD, a milli-nanodollar, per
token); per-call prices are integer micro-USD per 1,000 calls (1e-9 USD, a nanodollar, per call).
Every published price is a whole number in these units; `gateway.price_catalog` refuses one that
is not rather than round it.

The stored form is the facade's seven base integer columns plus one JSON value, `price_rules`
(`Prices.from_columns` / `Prices.to_rules`)::

    {
      "tiers": [                        # ascending "above"; may be empty
        {"above": 272000, "input_micros": 2500000, "cached_input_micros": 250000,
         "cache_write_micros": 0, "cache_write_extended_micros": 0, "output_micros": 15000000,
         "web_search_micros": 10000000, "file_search_micros": 2500000}
      ],
      "variants": {                     # name: [a-z0-9_-]{1,40}, the value the answer reports
        "priority": {<the seven price fields>, "tiers": [<as above>]}   # "tiers" may be omitted
      }
    }

Every price set in the JSON names all seven fields: what is stored is what is billed, with no
inheritance to reason about. `{}` (or null) means no tiers and no variants.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

# Service tiers an answer reports for ordinary processing: billed at the base prices, never
# "a tier with no variant". OpenAI reports `default`, Anthropic `standard`.
BASE_NAMES = frozenset({"default", "standard"})
VARIANT_NAME = re.compile(r"[a-z0-9_-]{1,40}")


class PriceError(ValueError):
    """A price table that cannot be stored or billed; `path` names the offending field."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path


@dataclass(frozen=True, slots=True)
class SevenPrices:
    """The seven prices, named once: tokens in micro-USD per million, tool calls in micro-USD per
    1,000 calls. `cache_write_micros` is the default retention's write (Anthropic 5 minutes); the
    extended retention (Anthropic 1 hour, OpenAI 12 hours) has its own price."""

    input_micros: int = 0
    cached_input_micros: int = 0
    cache_write_micros: int = 0
    cache_write_extended_micros: int = 0
    output_micros: int = 0
    web_search_micros: int = 0
    file_search_micros: int = 0


@dataclass(frozen=True, slots=True)
class PriceSet(SevenPrices):
    """One full set of prices (a request is billed at exactly one)."""


    def __post_init__(self):
        for name in PRICE_FIELDS:
            _check_int(name, getattr(self, name))

    def to_json(self) -> dict:
        return {name: getattr(self, name) for name in PRICE_FIELDS}

    @classmethod
    def from_json(cls, value, path: str, extra: frozenset = frozenset()) -> "PriceSet":
        """From a JSON object naming all seven fields (and only those, plus `extra`)."""
        if not isinstance(value, Mapping):
            raise PriceError(path, f"must be an object of the price fields, not {_json_type(value)}")
        unknown = sorted(set(value) - set(PRICE_FIELDS) - extra)
        if unknown:
            raise PriceError(f"{path}.{unknown[0]}", f"unknown field (the price fields are {', '.join(PRICE_FIELDS)})")
        missing = [name for name in PRICE_FIELDS if name not in value]
        if missing:
            raise PriceError(f"{path}.{missing[0]}", "missing (every price set names all seven prices)")
        for name in PRICE_FIELDS:
            _check_int(f"{path}.{name}", value[name])
        return cls(**{name: value[name] for name in PRICE_FIELDS})


PRICE_FIELDS = tuple(f.name for f in fields(PriceSet))
TOKEN_PRICE_FIELDS = PRICE_FIELDS[:5]  # per million tokens; the other two are per 1,000 calls

Tiers = tuple[tuple[int, PriceSet], ...]


@dataclass(frozen=True, slots=True)
class Variant:
    """The full prices a named service tier or speed is billed at, with its own long-context tiers."""

    prices: PriceSet
    tiers: Tiers = ()

    def __post_init__(self):
        object.__setattr__(self, "tiers", _checked_tiers(self.tiers, "tiers"))


@dataclass(frozen=True, slots=True)
class Prices(SevenPrices):
    """A facade's price table: the base prices (the seven fields), its tiers, and its variants. Not
    a PriceSet: a table is never billed as one without select().

    Tiers: `(threshold, PriceSet)` pairs, ascending. A tier applies when the request's total input
    tokens (cached reads and every cache write included) are strictly above its threshold, and
    then to every quantity of the request (a cliff, as providers bill it): at a threshold of
    272,000, a request of 272,000 input tokens is billed at the base, one of 272,001 at the tier.

    Variants: name -> `Variant`, named by the value the answer reports. Selection, in order:
      1. the answer's speed (Anthropic `fast`), if these prices have a variant of that name;
      2. else its service tier (OpenAI `flex`, `priority`, `scale`; Anthropic `priority`, `batch`),
         if these prices have a variant of that name;
      3. else the base.
    Then the tiers of what was selected. `default` and `standard` name the base and are not
    variant names. A reported tier or speed with no variant is billed at the base (or at the
    service tier's variant, for an unknown speed); `unpriced()` names it, so the caller can log it
    once per facade and name.
    """

    tiers: Tiers = ()
    variants: tuple[tuple[str, Variant], ...] = ()  # a Mapping is accepted and stored sorted by name
    # What select() reads, built once: (base, thresholds, tier price sets) per name.
    _base: tuple = field(init=False, repr=False, compare=False)
    _by_name: dict = field(init=False, repr=False, compare=False)
    _flat: PriceSet | None = field(init=False, repr=False, compare=False)  # the base, when nothing else can apply

    def __post_init__(self):
        base = PriceSet(*(getattr(self, name) for name in PRICE_FIELDS))
        tiers = _checked_tiers(self.tiers, "tiers")
        variants = self.variants.items() if isinstance(self.variants, Mapping) else self.variants
        variants = tuple(sorted(variants, key=lambda pair: pair[0]))
        for i, (name, variant) in enumerate(variants):
            _check_variant_name(name)
            if i and variants[i - 1][0] == name:
                raise PriceError(f"variants.{name}", "named twice")
            if not isinstance(variant, Variant):
                raise PriceError(f"variants.{name}", f"must be a Variant, not {type(variant).__name__}")
        object.__setattr__(self, "tiers", tiers)
        object.__setattr__(self, "variants", variants)
        object.__setattr__(self, "_base", _table(base, tiers))
        object.__setattr__(self, "_by_name", {name: _table(v.prices, v.tiers) for name, v in variants})
        object.__setattr__(self, "_flat", None if tiers or variants else base)

    @property
    def base(self) -> PriceSet:
        return self._base[0]

    def variant(self, name: str) -> Variant | None:
        return next((v for n, v in self.variants if n == name), None)

    def select(self, service_tier: str | None = None, speed: str | None = None, input_tokens: int = 0) -> PriceSet:
        """The `PriceSet` a request is billed at (the class docstring states the rule)."""
        table = self._base
        by_name = self._by_name
        if by_name:
            table = (speed is not None and by_name.get(speed)) \
                or (service_tier is not None and by_name.get(service_tier)) or table
        base, thresholds, sets = table
        if not thresholds or input_tokens <= thresholds[0]:
            return base
        i = len(thresholds) - 1
        while input_tokens <= thresholds[i]:
            i -= 1
        return sets[i]

    def unpriced(self, service_tier: str | None = None, speed: str | None = None) -> str | None:
        """The reported speed or service tier that selected no variant (so was not billed as itself), or None.

        A speed with no variant is named first; a service tier only when no speed variant was
        selected (a selected speed variant decides the prices, whatever the tier).
        """
        if speed is not None and speed not in BASE_NAMES:
            if speed in self._by_name:
                return None
            return speed
        if service_tier is not None and service_tier not in BASE_NAMES and service_tier not in self._by_name:
            return service_tier
        return None

    @classmethod
    def from_columns(cls, *, input_micros: int, cached_input_micros: int, cache_write_micros: int,
                     cache_write_extended_micros: int, output_micros: int, web_search_micros: int,
                     file_search_micros: int, rules: Mapping | None) -> "Prices":
        """From the facade's stored form: the seven base columns and the `price_rules` JSON (module docstring)."""
        tiers, variants = parse_rules(rules)
        return cls(input_micros, cached_input_micros, cache_write_micros, cache_write_extended_micros, output_micros,
                   web_search_micros, file_search_micros, tiers=tiers, variants=variants)

    def to_rules(self) -> dict:
        """The `price_rules` JSON value of these prices (the base prices go in the seven columns)."""
        variants = {}
        for name, v in self.variants:
            variants[name] = {**v.prices.to_json(), "tiers": _tiers_json(v.tiers)}
        return {"tiers": _tiers_json(self.tiers), "variants": variants}


def parse_rules(rules: Mapping | None) -> tuple[Tiers, dict[str, Variant]]:
    """Validate a `price_rules` JSON value; `PriceError` names the first bad field."""
    if rules is None:
        return (), {}
    if not isinstance(rules, Mapping):
        raise PriceError("price_rules", f"must be an object with \"tiers\" and \"variants\", not {_json_type(rules)}")
    unknown = sorted(set(rules) - {"tiers", "variants"})
    if unknown:
        raise PriceError(f"price_rules.{unknown[0]}", "unknown field (expected \"tiers\" and \"variants\")")
    tiers = _parse_tiers(rules.get("tiers", []), "price_rules.tiers")
    raw_variants = rules.get("variants", {})
    if not isinstance(raw_variants, Mapping):
        raise PriceError("price_rules.variants", f"must be an object of name: prices, not {_json_type(raw_variants)}")
    variants = {}
    for name, raw in raw_variants.items():
        path = f"price_rules.variants.{name}"
        _check_variant_name(name, path)
        prices = PriceSet.from_json(raw, path, extra=frozenset({"tiers"}))
        variants[name] = Variant(prices, _parse_tiers(raw.get("tiers", []), f"{path}.tiers"))
    return tiers, variants


def cost_nanos(prices: Prices, *, input_tokens: int, cached_input_tokens: int, cache_write_tokens: int,
               output_tokens: int, cache_write_extended_tokens: int = 0, web_search_calls: int = 0,
               file_search_calls: int = 0, service_tier: str | None = None, speed: str | None = None) -> int:
    """Nanodollars of one request, rounded once, half to even.

    `input_tokens` counts every prompt token: cached reads and all cache writes included.
    `cache_write_extended_tokens` is the part of `cache_write_tokens` written with the extended
    retention; the rest is billed at the default write price. `service_tier` and `speed` are what
    the answer reports; with `input_tokens` they select the prices (`Prices.select`).

    micro-USD per million tokens is a milli-nanodollar per token, and micro-USD per 1,000 calls a
    nanodollar per call, so the exact cost in milli-nanodollars is an integer sum; it is divided by
    1000 once, at the end.
    """
    p = prices._flat or prices.select(service_tier, speed, input_tokens)
    uncached = input_tokens - cached_input_tokens - cache_write_tokens
    default_writes = cache_write_tokens - cache_write_extended_tokens
    if uncached < 0 or default_writes < 0 or cached_input_tokens < 0 or cache_write_extended_tokens < 0 \
            or output_tokens < 0 or web_search_calls < 0 or file_search_calls < 0:
        raise ValueError(
            f"impossible usage: {input_tokens} input tokens, {cached_input_tokens} cached, {cache_write_tokens} "
            f"cache writes ({cache_write_extended_tokens} extended), {output_tokens} output, {web_search_calls} "
            f"web searches, {file_search_calls} file searches (cached and written tokens are part of the input, "
            "extended writes part of the writes, and nothing is negative)")
    milli_nanos = (
        uncached * p.input_micros
        + cached_input_tokens * p.cached_input_micros
        + default_writes * p.cache_write_micros
        + cache_write_extended_tokens * p.cache_write_extended_micros
        + output_tokens * p.output_micros
        + (web_search_calls * p.web_search_micros + file_search_calls * p.file_search_micros) * 1000
    )
    # Half to even, in integers (on the hot path; the same result as Decimal's ROUND_HALF_EVEN).
    nanos, rest = divmod(milli_nanos, 1000)
    if rest > 500 or (rest == 500 and nanos % 2):
        nanos += 1
    return nanos


def _table(base: PriceSet, tiers: Tiers) -> tuple[PriceSet, tuple[int, ...], tuple[PriceSet, ...]]:
    return base, tuple(t for t, _ in tiers), tuple(s for _, s in tiers)


def _checked_tiers(tiers, path: str) -> Tiers:
    checked = []
    previous = None
    for i, pair in enumerate(tiers):
        try:
            threshold, prices = pair
        except (TypeError, ValueError):
            raise PriceError(f"{path}[{i}]", "must be a (threshold input tokens, PriceSet) pair") from None
        _check_int(f"{path}[{i}] threshold", threshold)
        if not isinstance(prices, PriceSet):
            raise PriceError(f"{path}[{i}]", f"prices must be a PriceSet, not {type(prices).__name__}")
        if previous is not None and threshold <= previous:
            raise PriceError(f"{path}[{i}] threshold", f"{threshold} must be above the previous tier's {previous}")
        previous = threshold
        checked.append((threshold, prices))
    return tuple(checked)


def _parse_tiers(raw, path: str) -> Tiers:
    if not isinstance(raw, list):
        raise PriceError(path, f"must be a list of tiers, not {_json_type(raw)}")
    tiers = []
    for i, tier in enumerate(raw):
        here = f"{path}[{i}]"
        prices = PriceSet.from_json(tier, here, extra=frozenset({"above"}))
        if "above" not in tier:
            raise PriceError(f"{here}.above", "missing (the input tokens above which the tier applies)")
        _check_int(f"{here}.above", tier["above"])
        if tiers and tier["above"] <= tiers[-1][0]:
            raise PriceError(f"{here}.above", f"{tier['above']} must be above the previous tier's {tiers[-1][0]}")
        tiers.append((tier["above"], prices))
    return tuple(tiers)


def _tiers_json(tiers: Tiers) -> list[dict]:
    return [{"above": threshold, **prices.to_json()} for threshold, prices in tiers]


def _check_int(path: str, value) -> None:
    # bool is an int subclass, and a float from JSON (2.5e6) is not exact money: both refused.
    if type(value) is not int:
        raise PriceError(path, f"must be a whole number, not {_json_type(value)} {value!r}")
    if value < 0:
        raise PriceError(path, f"must not be negative ({value})")


def _check_variant_name(name, path: str | None = None) -> None:
    path = path or f"variants.{name}"
    if not isinstance(name, str) or not VARIANT_NAME.fullmatch(name):
        raise PriceError(path, f"variant name {name!r} must be 1-40 of a-z, 0-9, _ and -")
    if name in BASE_NAMES:
        raise PriceError(path, f"{name!r} names the base prices; put them in the base price fields")


def _json_type(value) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "object",
            type(None): "null"}.get(type(value), type(value).__name__)
