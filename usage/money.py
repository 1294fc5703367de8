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
    """"1.500000000": the API's, headers' and logs' form (integer arithmetic: it is on the hot path)."""
    sign = "-" if nanos < 0 else ""
    whole, fraction = divmod(abs(nanos), NANOS_PER_USD)
    return f"{sign}{whole}.{fraction:09d}"


def usd_for_people(amount: Decimal) -> str:
    """The pages' form. Zero is "$0"; a cent or more is "$1,234.57" (half up, to the cent); less than a
    cent shows two significant digits, half up ("$0.0021", "$0.00012", "$0.00000049"), so a real
    per-request amount never reads "$0.00". Negative amounts keep their sign: "-$0.0021"."""
    if amount == 0:
        return "$0"
    sign = "-" if amount < 0 else ""
    size = abs(amount)
    if size < CENT:
        # adjusted() is the exponent of the leading digit (0.0021 -> -3): keep that digit and the next.
        digits = size.quantize(Decimal(1).scaleb(size.adjusted() - 1), rounding=ROUND_HALF_UP)
        if digits < CENT:  # else it rounded up to a whole cent (0.00995 -> 0.010): the cents' form
            return f"{sign}${digits:f}"
    return f"{sign}${size.quantize(CENT, rounding=ROUND_HALF_UP):,.2f}"


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
    """Exact USD without trailing zeros, never in exponent form ($10 is "10", not "1E+1")."""
    if not micros:
        return Decimal("0")
    usd = (Decimal(micros) / MICROS_PER_USD).normalize()
    return usd.quantize(Decimal(1)) if usd == usd.to_integral_value() else usd
