"""The price catalog: a facade's prices filled from, and checked against, the `genai-prices` package.

This is the only module that imports genai_prices, and only inside functions: loading its data
costs noticeable time and memory, which the gateway processes (that never read the catalog) must
not pay. The catalog is read when a facade is created or its prices synced, never per request;
the gateway bills from the facade's stored prices (`usage.pricing`).

Only the data bundled with the installed package is read (`genai_prices.data`), never its online
refresh (`UpdatePrices` is never started, and the module-level snapshot a refresh would replace
is not consulted): the prices a facade gets depend on the pinned version alone.

How the catalog's quantities land on a `PriceSet`, and what a quantity with no price of its own
costs, follow `genai_prices.calc_price` exactly: a quantity the model does not price is billed
within its nearest priced parent (a 1-hour write at the write price; a write, or a cached read, at
the input price), and a tool call nobody prices costs nothing.
"""

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from usage.pricing import PRICE_FIELDS, PriceError, PriceSet, Prices, Variant

# PriceSet field -> genai-prices price keys, the quantity's own first, then its parents': the
# first the model prices is the one calc_price bills that quantity at.
CATALOG_KEYS = {
    "input_micros": ("input_mtok",),
    "cached_input_micros": ("cache_read_mtok", "input_mtok"),
    "cache_write_micros": ("cache_write_mtok", "input_mtok"),
    "cache_write_extended_micros": ("cache_write_1h_mtok", "cache_write_mtok", "input_mtok"),
    "output_micros": ("output_mtok",),
    "web_search_micros": ("web_searches_kcount",),
    "file_search_micros": ("storage_searches_kcount",),  # OpenAI's file search tool calls
}
KNOWN_KEYS = frozenset(key for keys in CATALOG_KEYS.values() for key in keys)
# PriceVariant.when keys whose value names the variant; `processing: batch` is the batch discount,
# which the answer reports as its service tier (`batch`).
VARIANT_KEYS = ("speed", "service_tier", "processing")

# PriceSet field -> the facade's column. The seven base prices are columns; tiers and variants
# are the `price_rules` JSON column (usage.pricing's module docstring).
PRICE_COLUMNS = {
    "input_micros": "input_price_micros",
    "cached_input_micros": "cached_input_price_micros",
    "cache_write_micros": "cache_write_price_micros",
    "cache_write_extended_micros": "cache_write_extended_price_micros",
    "output_micros": "output_price_micros",
    "web_search_micros": "web_search_price_micros",
    "file_search_micros": "file_search_price_micros",
}


class CatalogError(ValueError):
    """A reference the catalog does not know, or prices a facade cannot hold exactly."""


@dataclass(frozen=True)
class CatalogEntry:
    ref: str  # "provider:model", the catalog's own ids
    prices: Prices
    version: str  # what a facade stores as catalog_version: the package and the price's start date
    ignored: tuple[str, ...] = ()  # catalog prices a facade cannot express (their quantities bill at the parent's)


@dataclass(frozen=True)
class Difference:
    field: str  # a column, or a path into price_rules
    stored: int | None  # None: not there
    catalog: int | None

    def __str__(self):
        return f"{self.field}: {_show(self.stored)} stored, {_show(self.catalog)} in the catalog"


def catalog_version() -> str:
    from importlib.metadata import version

    return f"genai-prices {version('genai-prices')}"


def list_catalog_models(provider: str | None = None) -> list[tuple[str, str]]:
    """(ref, display name) of every catalog model, of one provider if given, sorted by ref."""
    from genai_prices.data import providers

    return sorted((f"{p.id}:{m.id}", m.name or m.id) for p in providers if provider in (None, p.id) for m in p.models)


def catalog_prices(ref: str, at: datetime | None = None) -> CatalogEntry:
    """The catalog's prices for "provider:model" (e.g. "openai:gpt-5"), as active at `at` (default now).

    Variants are the model's price variants active at `at` whose context is one speed, service
    tier or `processing: batch`, named by its value, each the standard prices with the variant's
    overrides (as genai_prices resolves a request with that context). Variants of other contexts
    (a route, a search type, several keys at once) and prices of quantities a facade does not
    count (audio, images, per request...) are listed in `ignored`, for the caller to show: their
    quantities are billed within their parents'. A model the catalog prices nothing for (a free
    one) gets zeros. Refused with a CatalogError naming the model, the field and the value: a price
    that is not a whole number of micro-USD; prices by time of day; a model priced only by
    quantities a facade does not count.
    """
    at = at or datetime.now(UTC)
    provider, model = _find(ref)
    name = f"{provider.id}:{model.id}"
    standard, start = _standard(name, model, at)
    ignored = _unexpressed(standard)
    tiers, base = _price_table(name, "", standard)
    variants = {}
    named_by = {}
    # calc_price applies no variant to a model found through a fallback provider.
    own_model = any(model is m for m in provider.models)
    for variant in (model.price_variants or ()) if own_model else ():
        if hasattr(variant.constraint, "start_time"):
            raise CatalogError(f"{name}: a variant priced by time of day ({variant.when}) cannot be stored")
        if variant.constraint is not None and not variant.constraint.active(at):
            continue
        (key, value), *more = variant.when.items()
        if more or key not in VARIANT_KEYS:
            ignored += (f"variant {variant.when}",)
            continue
        if value in ("default", "standard"):
            if _price_table(name, f"variants.{value}.", model.get_prices(at, {key: value})) != (tiers, base):
                raise CatalogError(f"{name}: the {key} {value!r} is priced apart from the standard prices")
            continue
        if named_by.setdefault(value, key) != key:
            raise CatalogError(f"{name}: {named_by[value]} and {key} both name a variant {value!r}")
        resolved = model.get_prices(at, {key: value})
        ignored += tuple(k for k in _unexpressed(resolved) if k not in ignored)
        variant_tiers, variant_base = _price_table(name, f"variants.{value}.", resolved)
        variants[value] = Variant(variant_base, variant_tiers)
    try:
        prices = Prices(*(getattr(base, f) for f in PRICE_FIELDS), tiers=tiers, variants=variants)
    except PriceError as exc:  # a variant name a facade cannot store
        raise CatalogError(f"{name}: {exc}") from None
    version = catalog_version() + (f", prices from {start.isoformat()}" if start else "")
    return CatalogEntry(ref=name, prices=prices, version=version, ignored=ignored)


def facade_price_fields(ref: str, at: datetime | None = None) -> dict:
    """The facade's field values for a catalog model: what `create_facade --catalog` and `prices --apply` set."""
    entry = catalog_prices(ref, at)
    fields = {column: getattr(entry.prices, f) for f, column in PRICE_COLUMNS.items()}
    return {**fields, "price_rules": entry.prices.to_rules(), "catalog_ref": entry.ref,
            "catalog_version": entry.version}


def stored_prices(facade) -> Prices:
    """The `Prices` of anything with the facade's price attributes (a model instance or a plain object)."""
    return Prices.from_columns(**{f: getattr(facade, column) for f, column in PRICE_COLUMNS.items()},
                               rules=facade.price_rules)


def differences(facade, at: datetime | None = None) -> list[Difference]:
    """Where the facade's stored prices differ from its catalog model's (`prices --check`); [] without a catalog_ref."""
    if not facade.catalog_ref:
        return []
    stored, catalog = _flat(stored_prices(facade)), _flat(catalog_prices(facade.catalog_ref, at).prices)
    return [Difference(key, stored.get(key), catalog.get(key))
            for key in {**stored, **catalog} if stored.get(key) != catalog.get(key)]


def apply_catalog(facade, at: datetime | None = None) -> list[Difference]:
    """Set the facade's prices (attributes only; the caller saves) to its catalog model's, returning what changed."""
    changed = differences(facade, at)
    for attribute, value in facade_price_fields(facade.catalog_ref, at).items():
        setattr(facade, attribute, value)
    return changed


def _find(ref: str):
    from genai_prices.data import providers
    from genai_prices.data_snapshot import find_provider_by_id

    provider_id, sep, model_ref = ref.partition(":")
    if not sep or not provider_id or not model_ref:
        raise CatalogError(f"{ref!r}: a catalog reference is provider:model, such as openai:gpt-5")
    provider = find_provider_by_id(providers, provider_id)
    if provider is None:
        raise CatalogError(f"{ref!r}: no provider {provider_id!r} in the price catalog ({catalog_version()})")
    # The catalog's own id first: not every id matches its model's own match rules.
    model = next((m for m in provider.models if m.id == model_ref), None) \
        or provider.find_model(model_ref, all_providers=providers)
    if model is None:
        raise CatalogError(f"{ref!r}: no model {model_ref!r} of {provider.id} in the price catalog "
                           f"({catalog_version()})")
    return provider, model


def _standard(name: str, model, at: datetime):
    """The model's standard prices at `at`, and the start date of the conditional price chosen (or None)."""
    from genai_prices.types import ModelPrice

    if isinstance(model.prices, ModelPrice):
        return model.prices, None
    if any(hasattr(c.constraint, "start_time") for c in model.prices):
        raise CatalogError(f"{name}: prices by time of day cannot be stored on a facade")
    # As ModelInfo.get_prices: the last active conditional price, else the first.
    active = (c for c in reversed(model.prices) if c.constraint is None or c.constraint.active(at))
    chosen = next(active, model.prices[0])
    return chosen.prices, getattr(chosen.constraint, "start_date", None)


def _price_table(name: str, where: str, model_price) -> tuple[tuple, PriceSet]:
    """(tiers, base PriceSet) of one resolved genai_prices ModelPrice, tiers at the union of every key's thresholds."""
    from genai_prices.types import TieredPrices

    priced = {key: getattr(model_price, key) for key in KNOWN_KEYS}
    priced = {key: value for key, value in priced.items() if value is not None}
    if "input_mtok" not in priced and _unexpressed(model_price):
        raise CatalogError(f"{name}: the catalog prices it by {', '.join(_unexpressed(model_price))}, "
                           "not by the token, which a facade cannot bill")
    thresholds = sorted({t.start for v in priced.values() if isinstance(v, TieredPrices) for t in v.tiers})

    def price_set(total_input: int) -> PriceSet:
        values = {}
        for field, keys in CATALOG_KEYS.items():
            key = next((k for k in keys if k in priced), None)
            values[field] = 0 if key is None else _micros(name, where + field, key, _at(priced[key], total_input))
        return PriceSet(**values)

    # A tier above t applies from t + 1 input tokens (calc_price: total input > tier start).
    return tuple((t, price_set(t + 1)) for t in thresholds), price_set(0)


def _at(price, total_input: int) -> Decimal:
    from genai_prices.types import TieredPrices

    if not isinstance(price, TieredPrices):
        return price
    return next((tier.price for tier in reversed(price.tiers) if total_input > tier.start), price.base)


def _micros(name: str, field: str, key: str, usd: Decimal) -> int:
    micros = usd * 1_000_000
    if micros != micros.to_integral_value():
        raise CatalogError(f"{name}: {field} ({key}) is ${usd}, not a whole number of micro-USD")
    return int(micros)


def _unexpressed(model_price) -> tuple[str, ...]:
    return tuple(sorted(key for key, value in model_price.__dict__.items()
                        if value is not None and not key.startswith("_") and key not in KNOWN_KEYS))


def _flat(prices: Prices) -> dict[str, int]:
    flat = {PRICE_COLUMNS[f]: getattr(prices, f) for f in PRICE_FIELDS}
    _flatten_tiers(flat, "price_rules.tiers", prices.tiers)
    for name, variant in prices.variants:
        flat.update({f"price_rules.variants.{name}.{f}": getattr(variant.prices, f) for f in PRICE_FIELDS})
        _flatten_tiers(flat, f"price_rules.variants.{name}.tiers", variant.tiers)
    return flat


def _flatten_tiers(flat: dict, path: str, tiers) -> None:
    for threshold, prices in tiers:
        flat.update({f"{path}[above {threshold}].{f}": getattr(prices, f) for f in PRICE_FIELDS})


def _show(value: int | None) -> str:
    return "absent" if value is None else f"{value:,}"
