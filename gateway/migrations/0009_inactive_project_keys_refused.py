"""An inactive project's keys are refused (the help text says so; no schema change)."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('gateway', '0008_project_alert_webhook'),
    ]

    operations = [
        migrations.AlterField(
            model_name='project',
            name='is_active',
            field=models.BooleanField(default=True, help_text='An inactive project gets no new keys and its keys are refused, as revoked ones are, until it is active again; its usage stays.', verbose_name='active'),
        ),
    ]
