"""The model facades' admin: prices edited in USD, a catalog model's prices filled in the page, and
routing (where traffic goes, who pays) set only by those who may route."""

import json
from contextlib import suppress
from datetime import date
from decimal import Decimal
from functools import lru_cache

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.forms.fields import InvalidJSONInput
from django.utils import timezone
from django.utils.html import format_html, json_script
from django.utils.text import capfirst

from gateway.models import ModelFacade, may_route, shown_routing_value
from gateway.models.facades import USD_PRICES, UsdPrice
from gateway.price_catalog import (CatalogError, catalog_prices, catalog_version, differences, facade_price_fields,
                                   list_catalog_models)
from usage.money import MICROS_PER_USD, micros_to_usd, usd_to_micros

CATALOG_DATA_ID = "facade-catalog-data"


def usd(micros: int) -> str:
    """A price for the page: "10", "0.075" (micros_to_usd normalizes 10 to Decimal("1E+1"))."""
    return f"{micros_to_usd(micros):f}"


def usd_label(price: UsdPrice) -> str:
    return f"{price.label} (USD / {price.per})"


def usd_column(column: str, description: str):
    """A price column's value in USD, for the list and for the read-only form."""
    @admin.display(description=description, ordering=column)
    def price(self, obj):
        return usd(getattr(obj, column))
    return price


@lru_cache(maxsize=1)
def catalog_picker(day: date) -> tuple[list, dict]:
    """(grouped select choices, data island) of every catalog model a facade can hold, with its prices in
    USD (price_rules as stored, micro-USD). Built once a process and day: it reads the whole catalog (slow,
    and the catalog's memory, in the admin's process only; never on the gateway's path)."""
    groups, models = {}, {}
    for ref, name in list_catalog_models():
        try:
            fields = facade_price_fields(ref)
        except CatalogError:  # prices a facade cannot hold (by time of day, sub-micro-USD...): not offered
            continue
        provider, _, model = ref.partition(":")
        groups.setdefault(provider, []).append((ref, model if name == model else f"{model} ({name})"))
        rules = fields["price_rules"]
        models[ref] = [[usd(fields[price.column]) for price in USD_PRICES.values()],
                       rules if rules.get("tiers") or rules.get("variants") else {}]
    return list(groups.items()), {"fields": list(USD_PRICES), "models": models}


class CatalogSelect(forms.Select):
    """The catalog picker: a select of catalog models, followed by their prices as a JSON data island
    that gateway/facade_catalog.js copies into the price inputs when a model is picked."""

    def __init__(self, data, attrs=None):
        super().__init__(attrs)
        self.data = data

    def render(self, name, value, attrs=None, renderer=None):
        return super().render(name, value, attrs, renderer) + json_script(self.data, CATALOG_DATA_ID)


class PriceRulesField(forms.JSONField):
    """price_rules as indented JSON; an empty box is no tiers and no variants."""

    def prepare_value(self, value):
        if isinstance(value, InvalidJSONInput):
            return value
        return "" if value in (None, {}) else json.dumps(value, indent=1)

    def to_python(self, value):
        if value in self.empty_values:
            return {}
        try:
            return super().to_python(value)
        except ValidationError:
            try:
                json.loads(value)
            except json.JSONDecodeError as exc:  # say where, as create_facade --price-rules does
                raise ValidationError(f"price_rules is not JSON ({exc}).", code="invalid") from None
            raise


class UsdPriceField(forms.DecimalField):
    """A price typed in USD, cleaned to integer micro-USD by usage.money.usd_to_micros: the rule that
    `create_facade` applies too (a number, not negative, at most six digits after the point)."""

    def __init__(self, **kwargs):
        super().__init__(**{"initial": 0, **kwargs})

    def widget_attrs(self, widget):
        # The browser is told the same bounds, so that it flags a typo before the page is sent.
        return {**super().widget_attrs(widget), "min": "0", "step": f"{Decimal(1) / MICROS_PER_USD:f}"}

    def clean(self, value):
        amount = super().clean(value)
        try:
            return None if amount is None else usd_to_micros(amount)
        except ValueError as exc:
            raise ValidationError(f"{capfirst(str(exc))}.", code="invalid") from None


class ModelFacadeForm(forms.ModelForm):
    """Prices are edited in USD and stored as integer micro-USD; a catalog model picked fills them in the page."""

    base_url = forms.URLField(max_length=500, assume_scheme="https",
                              help_text="As the provider's SDK takes it: https://api.openai.com/v1 or https://api.anthropic.com")
    input_price = UsdPriceField()
    cached_input_price = UsdPriceField()
    cache_write_price = UsdPriceField()
    cache_write_extended_price = UsdPriceField(
        help_text="Writes with the extended retention (Anthropic's 1 hour, OpenAI's 12 hours).")
    output_price = UsdPriceField()
    web_search_price = UsdPriceField()
    file_search_price = UsdPriceField()
    price_rules = PriceRulesField(
        required=False, widget=forms.Textarea(attrs={"rows": 8, "cols": 60, "spellcheck": "false"}),
        help_text='Long-context tiers and service-tier or speed variants in micro-USD: {"tiers": [{"above": '
                  'input tokens, the seven *_micros prices}], "variants": {"batch": {the seven prices, "tiers": '
                  '[...]}}}. Every price set names all seven. Empty: none.')

    class Meta:
        model = ModelFacade
        fields = ["name", "provider", "kind", "base_url", "upstream_model", "api_key_env", "openai_organization",
                  "openai_project", "is_active", "catalog_ref", "price_rules"]

    class Media:
        js = ["gateway/facade_catalog.js"]

    def clean_kind(self):
        return self.cleaned_data.get("kind") or ModelFacade.Kind.CHAT

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # A user who may only view facades gets a form without fields (the admin shows them read-only).
        if "kind" in self.fields:
            self.fields["kind"].required = False  # a form that leaves it out makes a chat facade, as the model does
        for name, price in USD_PRICES.items():
            if name in self.fields:
                self.fields[name].label = usd_label(price)
            if self.instance.pk:
                self.initial[name] = usd(getattr(self.instance, price.column))
        if "catalog_ref" in self.fields:
            self.fields["catalog_ref"] = self.catalog_field()

    def catalog_field(self) -> forms.ChoiceField:
        groups, data = catalog_picker(timezone.now().date())
        current = self.instance.catalog_ref
        offered = {ref for _, choices in groups for ref, _ in choices}
        # A facade keeps a catalog model the catalog no longer offers until someone picks another.
        kept = [(current, f"{current} (not in {catalog_version()})")] if current and current not in offered else []
        return forms.ChoiceField(
            label="Catalog model", required=False, choices=[("", "— none —"), *kept, *groups],
            widget=CatalogSelect(data), help_text="Picking a model fills the prices below from the price catalog "
            f"({catalog_version()}); they stay editable (a negotiated discount). `manage.py prices` lists where "
            "they differ from the catalog's.")

    def clean(self):
        cleaned = super().clean()
        # On the instance before the model's clean() runs, which validates the whole price table.
        for name, price in USD_PRICES.items():
            if cleaned.get(name) is not None:
                setattr(self.instance, price.column, cleaned[name])
        return cleaned

    def save(self, commit=True):
        facade = self.instance
        if not facade.catalog_ref:
            facade.catalog_version = ""
        elif "catalog_ref" in self.changed_data:
            facade.catalog_version = catalog_prices(facade.catalog_ref).version
        else:
            # The same catalog model: its version is recorded again when the prices match it (re-picked).
            with suppress(CatalogError):
                if not differences(facade):
                    facade.catalog_version = catalog_prices(facade.catalog_ref).version
        return super().save(commit)


@admin.register(ModelFacade)
class ModelFacadeAdmin(admin.ModelAdmin):
    form = ModelFacadeForm
    # Short cells (the provider's and kind's values, not their long labels; the base URL on hover) so
    # the prices stay in view on a laptop screen beside the navigation and the filters.
    list_display = ["name", "provider_short", "kind_short", "upstream", "catalog", "input_usd", "output_usd", "active"]
    list_filter = ["provider", "kind", "is_active"]
    search_fields = ["name", "upstream_model", "catalog_ref"]
    actions = ["deactivate"]

    class Media:
        css = {"all": ["gateway/facade_list.css"]}

    fieldsets = [
        (None, {"fields": ["name", "kind", "upstream_model", "is_active"]}),
        ("Routing", {"fields": list(ModelFacade.ROUTING_FIELDS),
                     "description": "Where the traffic goes and which credential and organization pay for it: "
                                    "set by superusers and holders of the “change facade routing” permission only."}),
        ("Prices", {"fields": ["catalog_ref", *USD_PRICES, "price_rules"],
                    "description": "USD per million tokens; searches USD per 1,000 calls. A change applies to "
                                   "later requests only."}),
    ]

    def get_readonly_fields(self, request, obj=None):
        # A field shown read-only is left out of the form, so a POST that sets it anyway changes nothing.
        readonly = super().get_readonly_fields(request, obj)
        return readonly if may_route(request.user) else [*readonly, *ModelFacade.ROUTING_FIELDS, "upstream_proxy_shown"]

    def get_fieldsets(self, request, obj=None):
        # Read-only, the proxy URL is shown without its credentials.
        fieldsets = super().get_fieldsets(request, obj)
        if may_route(request.user):
            return fieldsets
        return [(name, {**options, "fields": ["upstream_proxy_shown" if field == "upstream_proxy" else field
                                               for field in options["fields"]]}) for name, options in fieldsets]

    @admin.display(description="upstream proxy")
    def upstream_proxy_shown(self, obj):
        return shown_routing_value("upstream_proxy", obj.upstream_proxy) if obj else ""

    def has_add_permission(self, request):
        # A new facade is routing from the start (a base URL and a credential).
        return super().has_add_permission(request) and may_route(request.user)

    def construct_change_message(self, request, form, formsets, add=False):
        """The admin's history names routing changes with their old and new values (variable
        names and URLs, never a credential), beside who made them."""
        message = super().construct_change_message(request, form, formsets, add)
        if add or not hasattr(form, "routing_before"):
            return message
        changes = [f"{name}: {shown_routing_value(name, before)!r} → "
                   f"{shown_routing_value(name, getattr(form.instance, name))!r}"
                   for name, before in form.routing_before.items() if getattr(form.instance, name) != before]
        if changes:
            message = [*message, {"changed": {"fields": ["routing (" + "; ".join(changes) + ")"]}}]
        return message

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        if obj is not None:
            form.routing_before = {name: getattr(obj, name) for name in ModelFacade.ROUTING_FIELDS}
        return form

    @admin.display(description="Kind", ordering="kind")
    def kind_short(self, obj):
        return obj.kind

    @admin.display(description="Provider", ordering="provider")
    def provider_short(self, obj):
        return format_html('<span title="{}">{}</span>', obj.base_url, obj.provider)

    @admin.display(description="Upstream", ordering="upstream_model")
    def upstream(self, obj):
        return obj.upstream_model

    @admin.display(description="Catalog", ordering="catalog_ref")
    def catalog(self, obj):
        return obj.catalog_ref or "—"

    @admin.display(description="Active", ordering="is_active", boolean=True)
    def active(self, obj):
        return obj.is_active

    input_usd = usd_column("input_price_micros", "In $/1M")
    output_usd = usd_column("output_price_micros", "Out $/1M")

    @admin.action(description="Deactivate selected facades (usage history is kept)")
    def deactivate(self, request, queryset):
        count = queryset.update(is_active=False)
        self.message_user(request, f"Deactivated {count} facade(s).", messages.SUCCESS)

    def has_delete_permission(self, request, obj=None):
        # A facade with usage is deactivated, never deleted (the bucket tables PROTECT it anyway).
        return False


# The price form fields shown read-only (to a user who may only view facades): the facade's price in USD.
for _name, _price in USD_PRICES.items():
    setattr(ModelFacadeAdmin, _name, usd_column(_price.column, usd_label(_price)))
