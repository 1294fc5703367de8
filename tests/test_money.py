"""Money's exact forms: amounts for people (zero, fractions of a cent, cents, thousands, negatives)
and the exact forms not tested elsewhere (nanos_to_usd is in test_pricing, usd_to_nanos's refusals
in test_budgets)."""

from decimal import Decimal

import pytest

from usage.money import micros_to_usd, usd_exact, usd_for_people, usd_to_micros, usd_to_nanos

pytestmark = pytest.mark.dbless  # touches no database: run in tests/run.sh's PostgreSQL pass only

FOR_PEOPLE = [
    # zero, however written
    ("0", "$0"),
    ("-0", "$0"),
    ("0.000000000", "$0"),
    # below a cent: two significant digits, half up
    ("0.0021", "$0.0021"),
    ("0.002100000", "$0.0021"),
    ("0.0007", "$0.00070"),
    ("0.005", "$0.0050"),
    ("0.000123456", "$0.00012"),
    ("0.00000049", "$0.00000049"),
    ("0.000000001", "$0.0000000010"),  # one nanodollar, the smallest stored amount
    ("0.00215", "$0.0022"),  # a half rounds up
    ("0.002149999", "$0.0021"),
    ("0.000125", "$0.00013"),
    ("0.0099", "$0.0099"),
    ("0.009949999", "$0.0099"),
    ("0.00995", "$0.01"),  # rounds up to a whole cent: the cents' form
    ("0.009999999", "$0.01"),
    # a cent or more: to the cent, half up, grouped
    ("0.01", "$0.01"),
    ("0.014999999", "$0.01"),
    ("0.015", "$0.02"),
    ("1.239", "$1.24"),
    ("1.5", "$1.50"),
    ("25", "$25.00"),
    ("1234.565", "$1,234.57"),
    ("1234.565000001", "$1,234.57"),
    ("1234.564999999", "$1,234.56"),
    ("1000", "$1,000.00"),
    ("1E+3", "$1,000.00"),
    ("12345678.9", "$12,345,678.90"),
    # negatives keep their sign, below a cent too
    ("-0.0021", "-$0.0021"),
    ("-0.00215", "-$0.0022"),  # half up is away from zero
    ("-0.00995", "-$0.01"),
    ("-1234.565", "-$1,234.57"),
]


@pytest.mark.parametrize(("amount", "shown"), FOR_PEOPLE)
def test_amounts_for_people(amount, shown):
    assert usd_for_people(Decimal(amount)) == shown


def test_no_amount_of_a_nanodollar_or_more_reads_as_zero_cents():
    for nanos in [1, 9, 10, 99, 4_999_999, 5_000_000, 9_949_999, 9_950_000]:
        shown = usd_for_people(Decimal(nanos) / 1_000_000_000)
        assert shown not in ("$0", "$0.00") and Decimal(shown.lstrip("$")) > 0, nanos


@pytest.mark.parametrize(("nanos", "exact"), [
    (0, "0.000000000"),
    (1, "0.000000001"),
    (700_000, "0.000700000"),
    (1_500_000_000, "1.500000000"),
    (1_234_565_000_001, "1234.565000001"),
    (-2_100_000, "-0.002100000"),
])
def test_exact_usd_has_nine_places_and_no_grouping(nanos, exact):
    assert usd_exact(nanos) == exact


def test_usd_to_nanos_takes_zero_and_trailing_zeros_past_nine_places():
    assert usd_to_nanos(Decimal("0")) == 0
    assert usd_to_nanos(Decimal("0.0000000010")) == 1
    assert usd_to_nanos(Decimal("1.500000000000")) == 1_500_000_000


@pytest.mark.parametrize(("usd", "micros"), [
    ("0", 0),
    ("0.000001", 1),
    ("0.15", 150_000),
    ("3", 3_000_000),
    ("3.750000", 3_750_000),
    ("15.0000000", 15_000_000),
])
def test_prices_convert_to_micros_exactly(usd, micros):
    assert usd_to_micros(Decimal(usd)) == micros
    assert micros_to_usd(micros) == Decimal(usd)


@pytest.mark.parametrize("bad", [Decimal("-0.01"), Decimal("0.0000001"), Decimal("NaN"), Decimal("Infinity"), 0.15, 3])
def test_prices_that_are_not_whole_micros_of_a_decimal_are_refused(bad):
    with pytest.raises(ValueError):
        usd_to_micros(bad)


def test_micros_show_without_trailing_zeros():
    assert str(micros_to_usd(150_000)) == "0.15"
    assert str(micros_to_usd(3_000_000)) == "3"
    assert str(micros_to_usd(10_000_000)) == "10" and str(micros_to_usd(1_500_000_000)) == "1500"
    assert str(micros_to_usd(0)) == "0"
