"""The API key becomes a ledger dimension: buckets are keyed by (bucket start, user, key, facade).

Every existing row goes to its user's reserved key ("before per-key accounting": revoked from
birth, never usable), so the key column is NOT NULL and ON CONFLICT always matches — a NULL key
would never conflict, and `rollup_usage --rebuild` would count such rows twice. Totals are kept
exactly: rows only gain a key, none is merged or split.
"""

import django.db.models.deletion
from django.db import migrations, models

LEVELS = ("fiveminuteusage", "hourlyusage", "dailyusage", "monthlyusage")


class Migration(migrations.Migration):
    """Three migrations, three transactions: on PostgreSQL the foreign key's deferred checks from the
    UPDATEs must be settled before the columns are altered."""

    dependencies = [("gateway", "0002_unique_key_prefix"), ("usage", "0006_reasoning_tokens")]

    operations = [
        *[migrations.AddField(model_name=level, name="key", field=models.ForeignKey(
            null=True, on_delete=django.db.models.deletion.PROTECT, related_name="+", to="gateway.apikey"))
          for level in LEVELS],
    ]
