"""Filters for the usage pages: money to the cent, compact and grouped counts, shares."""

from decimal import Decimal

from django import template

from usage import display
from usage.pricing import nanos_to_usd

register = template.Library()


@register.filter
def usd(amount: Decimal) -> str:
    return display.usd_cents(amount)


@register.filter
def nanos_usd(nanos: int) -> str:
    return display.usd_cents(nanos_to_usd(nanos))


@register.filter
def grouped(number: int) -> str:
    return f"{number:,}"


@register.filter
def compact(number: int) -> str:
    return display.compact(number)


@register.filter
def share(fraction: Decimal) -> str:
    return display.percent(fraction)
