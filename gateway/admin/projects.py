"""The projects' admin: members inline, the alert webhook's write-only secret, the Default project kept."""

from django import forms
from django.contrib import admin
from django.db.models import Count

from gateway.admin.usage_links import UsagePageLinks
from gateway.models import Project, ProjectMember


class ProjectMemberInline(admin.TabularInline):
    model = ProjectMember
    extra = 1
    autocomplete_fields = ["user"]


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
