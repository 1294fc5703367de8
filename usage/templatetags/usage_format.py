"""Filters for the usage pages: money for people, compact and grouped counts, shares."""

from decimal import Decimal

from django import template

from usage.web import display
from usage.money import nanos_to_usd, usd_for_people

register = template.Library()


@register.filter
def usd(amount: Decimal) -> str:
    return usd_for_people(amount)


@register.filter
def nanos_usd(nanos: int) -> str:
    return usd_for_people(nanos_to_usd(nanos))


@register.filter
def grouped(number: int) -> str:
    return f"{number:,}"


@register.filter
def compact(number: int) -> str:
    return display.compact(number)


@register.filter
def share(fraction: Decimal) -> str:
    return display.percent(fraction)
