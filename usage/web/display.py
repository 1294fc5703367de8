"""How usage counts are shown: compact counts (1.2M) and shares as percents (money: usage.money)."""

from decimal import ROUND_HALF_UP, Decimal

UNITS = [(10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")]


def compact(number: int) -> str:
    """1234 -> 1.2K, 1_250_000 -> 1.3M, 123_456_789 -> 123M, 999_960 -> 1M (half up, never 1000K)."""
    if abs(number) < 1000:
        return str(number)
    for size, suffix in reversed(UNITS):
        scaled = Decimal(number) / size
        rounded = scaled.quantize(Decimal(1) if abs(scaled) >= 100 else Decimal("0.1"), rounding=ROUND_HALF_UP)
        if abs(rounded) < 1000 or suffix == "T":
            break
    shown = rounded.to_integral() if rounded == rounded.to_integral() else rounded
    return f"{shown}{suffix}"


def percent(fraction: Decimal) -> str:
    return f"{(fraction * 100).quantize(Decimal('0.1'), rounding=ROUND_HALF_UP)}%"
