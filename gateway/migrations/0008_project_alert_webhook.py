"""A project's own webhook for budget alerts (#30): its URL and the secret that signs each body."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('gateway', '0007_projects'),
    ]

    operations = [
        migrations.AddField(
            model_name='project',
            name='alert_webhook_secret',
            field=models.CharField(blank=True, help_text='Signs each alert (X-CodeVector-Signature: sha256=HMAC-SHA256 of the body). Needed with a URL.', max_length=200, verbose_name='alert webhook secret'),
        ),
        migrations.AddField(
            model_name='project',
            name='alert_webhook_url',
            field=models.URLField(blank=True, help_text='Budget alerts of this project and its keys are POSTed here as signed JSON. Empty: none.', max_length=500, verbose_name='alert webhook URL'),
        ),
    ]
