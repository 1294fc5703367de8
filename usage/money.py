"""Money: integer nanodollars in storage, Decimal in code, never floats. Parse, format exactly, format
for people — every place that shows or reads an amount comes through here."""

from decimal import ROUND_HALF_UP, Decimal

NANOS_PER_USD = 1_000_000_000
MICROS_PER_USD = 1_000_000
NINE_PLACES = Decimal("0.000000001")
CENT = Decimal("0.01")


def nanos_to_usd(nanos: int) -> Decimal:
    """Exact USD with 9 digits after the point."""
    return (Decimal(nanos) / NANOS_PER_USD).quantize(NINE_PLACES)


def usd_exact(nanos: int) -> str:
    """"1.500000000": the API's, headers' and logs' form."""
    return format(nanos_to_usd(nanos), "f")


def usd_for_people(amount: Decimal) -> str:
    """"$1,234.50": the pages' form, to the cent."""
    rounded = amount.quantize(CENT, rounding=ROUND_HALF_UP)
    sign = "-" if rounded < 0 else ""
    return f"{sign}${abs(rounded):,.2f}"


def _whole_units(amount: Decimal, per_usd: int) -> int | None:
    """`amount` USD in units of 1/per_usd, or None if it is not a whole number of them."""
    units = amount * per_usd
    return int(units) if units == units.to_integral_value() else None


def usd_to_nanos(amount: Decimal) -> int:
    """A budget amount: USD, zero or more, at most 9 digits after the point."""
    if not amount.is_finite() or amount < 0:
        raise ValueError("the amount must be a number of USD, zero or more")
    nanos = _whole_units(amount, NANOS_PER_USD)
    if nanos is None:
        raise ValueError("the amount has more than 9 digits after the point")
    return nanos


def usd_to_micros(usd: Decimal) -> int:
    """A price: USD per million tokens -> integer micro-USD; refuses negatives and sub-micro precision."""
    if not isinstance(usd, Decimal) or not usd.is_finite():
        raise ValueError(f"{usd!r} is not a price")
    if usd < 0:
        raise ValueError(f"a price cannot be negative ({usd})")
    micros = _whole_units(usd, MICROS_PER_USD)
    if micros is None:
        raise ValueError(f"{usd} has more than 6 digits after the point")
    return micros


def micros_to_usd(micros: int) -> Decimal:
    return (Decimal(micros) / MICROS_PER_USD).normalize() if micros else Decimal("0")
