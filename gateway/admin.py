import json
from contextlib import suppress
from datetime import date
from decimal import Decimal
from functools import lru_cache

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import Count
from django.forms.fields import InvalidJSONInput
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, json_script

from gateway.models import ApiKey, ModelFacade, Project, ProjectMember, hash_key, may_route, shown_routing_value
from gateway.price_catalog import (CatalogError, catalog_prices, catalog_version, differences, facade_price_fields,
                                   list_catalog_models)
from usage.web import views as usage_views
from usage.money import micros_to_usd, usd_to_micros
from usage.web.permissions import sees_everyone

# form field -> (model field, label). Token prices are USD per million tokens, search prices USD per
# 1,000 calls; both are stored as integer micro-USD (usage.pricing).
PRICE_FIELDS = {
    "input_price": ("input_price_micros", "Input price (USD / 1M tokens)"),
    "cached_input_price": ("cached_input_price_micros", "Cached input price (USD / 1M tokens)"),
    "cache_write_price": ("cache_write_price_micros", "Cache write price (USD / 1M tokens)"),
    "cache_write_extended_price": ("cache_write_extended_price_micros",
                                   "Extended cache write price (USD / 1M tokens)"),
    "output_price": ("output_price_micros", "Output price (USD / 1M tokens)"),
    "web_search_price": ("web_search_price_micros", "Web search price (USD / 1,000 calls)"),
    "file_search_price": ("file_search_price_micros", "File search price (USD / 1,000 calls)"),
}
CATALOG_DATA_ID = "facade-catalog-data"


def usd(micros: int) -> str:
    """A price for the page: "10", "0.075" (micros_to_usd normalizes 10 to Decimal("1E+1"))."""
    return f"{micros_to_usd(micros):f}"


@lru_cache(maxsize=1)
def catalog_picker(day: date) -> tuple[list, dict]:
    """(grouped select choices, data island) of every catalog model a facade can hold, with its prices in
    USD (price_rules as stored, micro-USD). Built once a process and day: it reads the whole catalog (a
    few seconds and the catalog's memory, in the admin's process only; never on the gateway's path)."""
    groups, models = {}, {}
    for ref, name in list_catalog_models():
        try:
            fields = facade_price_fields(ref)
        except CatalogError:  # prices a facade cannot hold (by time of day, sub-micro-USD...): not offered
            continue
        provider, _, model = ref.partition(":")
        groups.setdefault(provider, []).append((ref, model if name == model else f"{model} ({name})"))
        rules = fields["price_rules"]
        models[ref] = [[usd(fields[column]) for column, _ in PRICE_FIELDS.values()],
                       rules if rules.get("tiers") or rules.get("variants") else {}]
    return list(groups.items()), {"fields": list(PRICE_FIELDS), "models": models}


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


class ModelFacadeForm(forms.ModelForm):
    """Prices are edited in USD and stored as integer micro-USD; a catalog model picked fills them in the page."""

    base_url = forms.URLField(max_length=500, assume_scheme="https",
                              help_text="As the provider's SDK takes it: https://api.openai.com/v1 or https://api.anthropic.com")
    input_price = forms.DecimalField(min_value=0, decimal_places=6, initial=0)
    cached_input_price = forms.DecimalField(min_value=0, decimal_places=6, initial=0)
    cache_write_price = forms.DecimalField(min_value=0, decimal_places=6, initial=0)
    cache_write_extended_price = forms.DecimalField(
        min_value=0, decimal_places=6, initial=0,
        help_text="Writes with the extended retention (Anthropic's 1 hour, OpenAI's 12 hours).")
    output_price = forms.DecimalField(min_value=0, decimal_places=6, initial=0)
    web_search_price = forms.DecimalField(min_value=0, decimal_places=6, initial=0)
    file_search_price = forms.DecimalField(min_value=0, decimal_places=6, initial=0)
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
        for form_field, (model_field, label) in PRICE_FIELDS.items():
            if form_field in self.fields:
                self.fields[form_field].label = label
            if self.instance.pk:
                self.initial[form_field] = usd(getattr(self.instance, model_field))
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
        for form_field, (model_field, _) in PRICE_FIELDS.items():
            if cleaned.get(form_field) is not None:
                setattr(self.instance, model_field, usd_to_micros(Decimal(cleaned[form_field])))
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
        ("Prices", {"fields": ["catalog_ref", *PRICE_FIELDS, "price_rules"],
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

    @admin.display(description="In $/1M", ordering="input_price_micros")
    def input_usd(self, obj):
        return usd(obj.input_price_micros)

    @admin.display(description="Out $/1M", ordering="output_price_micros")
    def output_usd(self, obj):
        return usd(obj.output_price_micros)

    @admin.action(description="Deactivate selected facades (usage history is kept)")
    def deactivate(self, request, queryset):
        count = queryset.update(is_active=False)
        self.message_user(request, f"Deactivated {count} facade(s).", messages.SUCCESS)

    def has_delete_permission(self, request, obj=None):
        # A facade with usage is deactivated, never deleted (the bucket tables PROTECT it anyway).
        return False


def _price_shown(model_field: str, label: str):
    @admin.display(description=label)
    def price(self, obj):
        return usd(getattr(obj, model_field))
    return price


# The price form fields shown read-only (to a user who may only view facades): the facade's price in USD.
for _form_field, (_model_field, _label) in PRICE_FIELDS.items():
    setattr(ModelFacadeAdmin, _form_field, _price_shown(_model_field, _label))


class ProjectMemberInline(admin.TabularInline):
    model = ProjectMember
    extra = 1
    autocomplete_fields = ["user"]


class UsagePageLinks:
    """A model admin whose objects have a usage page (`<id>/usage/`, named `usage_url_name`): the
    change page links to it and the list gains a "usage" column, for staff who see everyone's usage."""

    usage_url_name = ""

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = {**(extra_context or {}), "shows_usage": sees_everyone(request.user)}
        return super().change_view(request, object_id, form_url, extra_context)

    def get_list_display(self, request):
        columns = super().get_list_display(request)
        return [*columns, "usage_link"] if sees_everyone(request.user) else columns

    @admin.display(description="Usage")
    def usage_link(self, obj):
        return format_html('<a href="{}">usage</a>', reverse(f"admin:{self.usage_url_name}", args=[obj.pk]))


class ProjectForm(forms.ModelForm):
    """The alert webhook's secret is write-only: never rendered back, kept when left empty."""

    alert_webhook_secret = forms.CharField(
        label="Alert webhook secret", required=False, strip=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Signs each alert (X-CodeVector-Signature: sha256=HMAC-SHA256 of the body). Write-only: "
                  "leave empty to keep the current one.")
    clear_alert_webhook_secret = forms.BooleanField(label="Remove the secret", required=False)

    class Meta:
        model = Project
        fields = ["name", "description", "is_active", "alert_webhook_url", "alert_webhook_secret"]

    def clean_alert_webhook_secret(self):
        secret = self.cleaned_data["alert_webhook_secret"]
        if secret:
            return secret
        return "" if self.data.get("clear_alert_webhook_secret") else self.instance.alert_webhook_secret


@admin.register(Project)
class ProjectAdmin(UsagePageLinks, admin.ModelAdmin):
    usage_url_name = "gateway_project_usage"
    form = ProjectForm
    list_display = ["name", "public_id", "is_active", "key_count", "member_list", "webhook"]
    list_filter = ["is_active"]
    search_fields = ["name", "public_id"]
    fields = ["name", "public_id", "description", "is_active", "alert_webhook_url", "alert_webhook_secret",
              "clear_alert_webhook_secret", "secret_set", "created_at"]
    readonly_fields = ["public_id", "created_at", "secret_set"]
    inlines = [ProjectMemberInline]

    @admin.display(description="Alert webhook secret set")
    def secret_set(self, obj):
        return "yes" if obj.alert_webhook_secret else "no"  # never the secret itself

    @admin.display(description="Alert webhook")
    def webhook(self, obj):
        return "yes" if obj.alert_webhook_url else "—"
    change_form_template = "admin/usage/project_change_form.html"

    def get_urls(self):
        # `<id>/usage/`: the project's usage page (usage.web.views), as ApiKeyAdmin adds a key's.
        return [
            path("<int:id>/usage/", self.admin_site.admin_view(self.usage_view), name="gateway_project_usage"),
            *super().get_urls(),
        ]

    def usage_view(self, request, id):
        project = get_object_or_404(Project.objects.all(), pk=id)
        return usage_views.project_usage_view(request, self.admin_site, project, self.opts)

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(key_count=Count("api_keys")).prefetch_related("members__user")

    @admin.display(description="Keys", ordering="key_count")
    def key_count(self, obj):
        return obj.key_count

    @admin.display(description="Members")
    def member_list(self, obj):
        named = ", ".join(f"{m.user.get_username()}{' (owner)' if m.role == ProjectMember.Role.OWNER else ''}"
                          for m in sorted(obj.members.all(), key=lambda m: m.user.get_username()))
        if obj.is_default:
            return f"everyone; {named}" if named else "everyone"
        return named or "—"

    def has_delete_permission(self, request, obj=None):
        # The Default project is where keys without a project go, by the key column's database default.
        return super().has_delete_permission(request, obj) and not (obj and obj.is_default)


class ApiKeyAddForm(forms.ModelForm):
    project = forms.ModelChoiceField(
        Project.objects.filter(is_active=True), required=False, empty_label="Default project",
        help_text="A project the user belongs to. Fixed once the key is created.")
    expires_in_days = forms.IntegerField(min_value=1, required=False, help_text="Leave empty for a key that never expires.")

    class Meta:
        model = ApiKey
        fields = ["user", "name"]

    def clean(self):
        cleaned = super().clean()
        user, project = cleaned.get("user"), cleaned.get("project") or Project.objects.default()
        if user is not None and (refusal := project.key_refusal(user)):
            self.add_error("project", refusal)
        return cleaned


@admin.register(ApiKey)
class ApiKeyAdmin(UsagePageLinks, admin.ModelAdmin):
    usage_url_name = "gateway_apikey_usage"
    list_display = ["prefix_display", "name", "user", "project", "created_at", "last_used_at", "expires_at", "status"]
    list_filter = ["revoked_at", "project"]
    search_fields = ["prefix", "name", "user__username", "project__name", "project__public_id"]
    list_select_related = ["user", "project"]
    # The project is fixed at creation (ApiKey.save refuses a change): read-only here.
    readonly_fields = ["prefix_display", "user", "project", "created_at", "last_used_at"]
    fields = ["prefix_display", "user", "project", "name", "created_at", "last_used_at", "expires_at", "revoked_at"]
    actions = ["revoke"]
    autocomplete_fields = ["user"]
    change_form_template = "admin/gateway/apikey/change_form.html"

    def get_urls(self):
        # `<id>/usage/`: the key's usage page (usage.web.views), as UsageUserAdmin adds a user's.
        return [
            path("<int:id>/usage/", self.admin_site.admin_view(self.usage_view), name="gateway_apikey_usage"),
            *super().get_urls(),
        ]

    def usage_view(self, request, id):
        key = get_object_or_404(self.get_queryset(request).select_related("user"), pk=id)
        return usage_views.key_usage_view(request, self.admin_site, key, self.opts)

    @admin.display(description="Key", ordering="prefix")
    def prefix_display(self, obj):
        return f"{obj.prefix}…"

    @admin.display(description="Status")
    def status(self, obj):
        return obj.status()

    @admin.action(description="Revoke selected keys")
    def revoke(self, request, queryset):
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {count} key(s).", messages.SUCCESS)

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = ApiKeyAddForm
            kwargs["fields"] = None
        return super().get_form(request, obj, **kwargs)

    def get_fields(self, request, obj=None):
        return ["user", "project", "name", "expires_in_days"] if obj is None else self.fields

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else self.readonly_fields

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        created, raw = ApiKey.objects.create_key(
            form.cleaned_data["user"], name=form.cleaned_data["name"], expires_in_days=form.cleaned_data["expires_in_days"],
            project=form.cleaned_data["project"])
        obj.pk, obj.prefix, obj.digest = created.pk, created.prefix, created.digest
        obj._state.adding = False
        obj._raw_key = raw  # lives only in this request; rendered once by response_add

    def response_add(self, request, obj, post_url_continue=None):
        # The key is shown here once, never stored or put in a message cookie.
        context = {**self.admin_site.each_context(request), "opts": self.opts, "api_key": obj,
                   "raw_key": obj._raw_key, "title": "API key created"}
        assert hash_key(obj._raw_key) == obj.digest
        return TemplateResponse(request, "admin/gateway/apikey/created.html", context)
