from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from gateway.models import ApiKey, ModelFacade, hash_key, may_route
from usage import views as usage_views
from usage.money import micros_to_usd, usd_to_micros
from usage.permissions import sees_everyone

PRICE_FIELDS = {
    "input_price": ("input_price_micros", "Input"),
    "cached_input_price": ("cached_input_price_micros", "Cached input"),
    "cache_write_price": ("cache_write_price_micros", "Cache writes"),
    "output_price": ("output_price_micros", "Output"),
}


class ModelFacadeForm(forms.ModelForm):
    """Prices are edited in USD per million tokens and stored as integer micro-USD."""

    base_url = forms.URLField(max_length=500, assume_scheme="https",
                              help_text="As the provider's SDK takes it: https://api.openai.com/v1 or https://api.anthropic.com")
    input_price = forms.DecimalField(min_value=0, decimal_places=6, initial=0, label="Input price (USD / 1M tokens)")
    cached_input_price = forms.DecimalField(min_value=0, decimal_places=6, initial=0,
                                            label="Cached input price (USD / 1M tokens)")
    cache_write_price = forms.DecimalField(min_value=0, decimal_places=6, initial=0,
                                           label="Cache write price (USD / 1M tokens)")
    output_price = forms.DecimalField(min_value=0, decimal_places=6, initial=0, label="Output price (USD / 1M tokens)")

    class Meta:
        model = ModelFacade
        fields = ["name", "provider", "kind", "base_url", "upstream_model", "api_key_env", "openai_organization",
                  "openai_project", "is_active"]

    def clean_kind(self):
        return self.cleaned_data.get("kind") or ModelFacade.Kind.CHAT

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["kind"].required = False  # a form that leaves it out makes a chat facade, as the model does
        if self.instance.pk:
            for form_field, (model_field, _) in PRICE_FIELDS.items():
                self.initial[form_field] = micros_to_usd(getattr(self.instance, model_field))

    def save(self, commit=True):
        for form_field, (model_field, _) in PRICE_FIELDS.items():
            setattr(self.instance, model_field, usd_to_micros(Decimal(self.cleaned_data[form_field])))
        return super().save(commit)


@admin.register(ModelFacade)
class ModelFacadeAdmin(admin.ModelAdmin):
    form = ModelFacadeForm
    list_display = ["name", "provider", "kind", "upstream_model", "base_url", "input_usd", "output_usd", "is_active"]
    list_filter = ["provider", "kind", "is_active"]
    search_fields = ["name", "upstream_model"]
    actions = ["deactivate"]
    fieldsets = [
        (None, {"fields": ["name", "kind", "upstream_model", "is_active"]}),
        ("Routing", {"fields": list(ModelFacade.ROUTING_FIELDS),
                     "description": "Where the traffic goes and which credential and organization pay for it: "
                                    "set by superusers and holders of the “change facade routing” permission only."}),
        ("Prices", {"fields": list(PRICE_FIELDS), "description": "USD per million tokens. A change applies to later requests only."}),
    ]

    def get_readonly_fields(self, request, obj=None):
        # A field shown read-only is left out of the form, so a POST that sets it anyway changes nothing.
        readonly = super().get_readonly_fields(request, obj)
        return readonly if may_route(request.user) else [*readonly, *ModelFacade.ROUTING_FIELDS]

    def has_add_permission(self, request):
        # A new facade is routing from the start (a base URL and a credential).
        return super().has_add_permission(request) and may_route(request.user)

    def construct_change_message(self, request, form, formsets, add=False):
        """The admin's history names routing changes with their old and new values (variable
        names and URLs, never a credential), beside who made them."""
        message = super().construct_change_message(request, form, formsets, add)
        if add or not hasattr(form, "routing_before"):
            return message
        changes = [f"{name}: {before!r} → {getattr(form.instance, name)!r}"
                   for name, before in form.routing_before.items() if getattr(form.instance, name) != before]
        if changes:
            message = [*message, {"changed": {"fields": ["routing (" + "; ".join(changes) + ")"]}}]
        return message

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        if obj is not None:
            form.routing_before = {name: getattr(obj, name) for name in ModelFacade.ROUTING_FIELDS}
        return form

    @admin.display(description="Input $/1M")
    def input_usd(self, obj):
        return micros_to_usd(obj.input_price_micros)

    @admin.display(description="Output $/1M")
    def output_usd(self, obj):
        return micros_to_usd(obj.output_price_micros)

    @admin.action(description="Deactivate selected facades (usage history is kept)")
    def deactivate(self, request, queryset):
        count = queryset.update(is_active=False)
        self.message_user(request, f"Deactivated {count} facade(s).", messages.SUCCESS)

    def has_delete_permission(self, request, obj=None):
        # A facade with usage is deactivated, never deleted (the bucket tables PROTECT it anyway).
        return False


class ApiKeyAddForm(forms.ModelForm):
    expires_in_days = forms.IntegerField(min_value=1, required=False, help_text="Leave empty for a key that never expires.")

    class Meta:
        model = ApiKey
        fields = ["user", "name"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["prefix_display", "name", "user", "created_at", "last_used_at", "expires_at", "status"]
    list_filter = ["revoked_at"]
    search_fields = ["prefix", "name", "user__username"]
    list_select_related = ["user"]
    readonly_fields = ["prefix_display", "user", "created_at", "last_used_at"]
    fields = ["prefix_display", "user", "name", "created_at", "last_used_at", "expires_at", "revoked_at"]
    actions = ["revoke"]
    autocomplete_fields = ["user"]
    change_form_template = "admin/gateway/apikey/change_form.html"

    def get_urls(self):
        # `<id>/usage/`: the key's usage page (usage.views), as UsageUserAdmin adds a user's.
        return [
            path("<int:id>/usage/", self.admin_site.admin_view(self.usage_view), name="gateway_apikey_usage"),
            *super().get_urls(),
        ]

    def usage_view(self, request, id):
        key = get_object_or_404(self.get_queryset(request).select_related("user"), pk=id)
        return usage_views.key_usage_view(request, self.admin_site, key, self.opts)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = {**(extra_context or {}), "shows_usage": sees_everyone(request.user)}
        return super().change_view(request, object_id, form_url, extra_context)

    def get_list_display(self, request):
        columns = super().get_list_display(request)
        return [*columns, "usage_link"] if sees_everyone(request.user) else columns

    @admin.display(description="Usage")
    def usage_link(self, obj):
        return format_html('<a href="{}">usage</a>', reverse("admin:gateway_apikey_usage", args=[obj.pk]))

    @admin.display(description="Key", ordering="prefix")
    def prefix_display(self, obj):
        return f"{obj.prefix}…"

    @admin.display(description="Status")
    def status(self, obj):
        now = timezone.now()
        if obj.revoked_at:
            return "revoked"
        if obj.expires_at and obj.expires_at <= now:
            return "expired"
        return "active"

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
        return ["user", "name", "expires_in_days"] if obj is None else self.fields

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else self.readonly_fields

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        created, raw = ApiKey.objects.create_key(
            form.cleaned_data["user"], name=form.cleaned_data["name"], expires_in_days=form.cleaned_data["expires_in_days"]
        )
        obj.pk, obj.prefix, obj.digest = created.pk, created.prefix, created.digest
        obj._state.adding = False
        obj._raw_key = raw  # lives only in this request; rendered once by response_add

    def response_add(self, request, obj, post_url_continue=None):
        # The key is shown here once, never stored or put in a message cookie.
        context = {**self.admin_site.each_context(request), "opts": self.opts, "api_key": obj,
                   "raw_key": obj._raw_key, "title": "API key created"}
        assert hash_key(obj._raw_key) == obj.digest
        return TemplateResponse(request, "admin/gateway/apikey/created.html", context)
