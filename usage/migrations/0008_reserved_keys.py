"""Every existing bucket row goes to its user's reserved key (see 0007_key_dimension)."""

from django.db import migrations
from django.utils import timezone

LEVELS = ("fiveminuteusage", "hourlyusage", "dailyusage", "monthlyusage")


def reserved_keys(apps, schema_editor):
    """One reserved key per user with usage, the rows ledger.with_reserved_keys() would make."""
    ApiKey = apps.get_model("gateway", "ApiKey")
    users = set()
    for level in LEVELS:
        users.update(apps.get_model("usage", level).objects.values_list("user_id", flat=True).distinct())
    now = timezone.now()
    for user_id in sorted(users):
        key, _ = ApiKey.objects.get_or_create(
            digest=f"reserved:{user_id}",
            defaults={"user_id": user_id, "name": "before per-key accounting", "prefix": f"pre-{user_id}",
                      "revoked_at": now})
        for level in LEVELS:
            apps.get_model("usage", level).objects.filter(user_id=user_id).update(key_id=key.pk)


class Migration(migrations.Migration):
    dependencies = [("usage", "0007_key_dimension")]

    operations = [migrations.RunPython(reserved_keys, migrations.RunPython.noop)]
