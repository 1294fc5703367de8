"""The API keys' admin: a new key shown once, in a project its user belongs to; keys revoked from the list."""

from django import forms
from django.contrib import admin, messages
from django.template.response import TemplateResponse
from django.utils import timezone

from gateway.admin.usage_links import UsagePageLinks
from gateway.models import ApiKey, Project, hash_key


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
