"""The key column becomes NOT NULL and part of each level's unique bucket key (see 0007_key_dimension)."""

import django.db.models.deletion
from django.db import migrations, models

LEVELS = ("fiveminuteusage", "hourlyusage", "dailyusage", "monthlyusage")
SHORT = {"fiveminuteusage": "5min", "hourlyusage": "hour", "dailyusage": "day", "monthlyusage": "month"}


class Migration(migrations.Migration):
    dependencies = [("usage", "0008_reserved_keys")]

    operations = [
        *[migrations.AlterField(model_name=level, name="key", field=models.ForeignKey(
            on_delete=django.db.models.deletion.PROTECT, related_name="+", to="gateway.apikey"))
          for level in LEVELS],
        *[migrations.RemoveConstraint(model_name=level, name=f"usage_{SHORT[level]}_key") for level in LEVELS],
        *[migrations.AddConstraint(model_name=level, constraint=models.UniqueConstraint(
            fields=("bucket_start", "user", "key", "facade"), name=f"usage_{SHORT[level]}_bucket"))
          for level in LEVELS],
        *[migrations.AddIndex(model_name=level, index=models.Index(
            fields=["key", "bucket_start"], name=f"usage_{SHORT[level]}_apikey")) for level in LEVELS],
    ]
