"""Budget alerts (#30): a decided alert, once per budget, subject, period and threshold (a unique
constraint over NOT NULL columns only), and its deliveries, the outbox swept by usage.alerts."""

import django.db.models.deletion
import usage.models
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('gateway', '0008_project_alert_webhook'),
        ('usage', '0014_budget_scopes'),
    ]

    operations = [
        migrations.CreateModel(
            name='BudgetAlert',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('scope', models.CharField(choices=[('user', 'user'), ('key', 'API key'), ('project', 'project'), ('default', 'default (every user without their own)')], max_length=10)),
                ('subject_pk', models.BigIntegerField(verbose_name="subject's id")),
                ('subject', models.CharField(help_text='Username, key prefix or project id, as alerts name it.', max_length=150)),
                ('period', models.CharField(choices=[('daily', 'daily'), ('weekly', 'weekly (from Monday)'), ('monthly', 'monthly (calendar month)'), ('total', 'total (never resets)')], max_length=10)),
                ('period_start', models.DateTimeField(blank=True, help_text='Empty for a total budget.', null=True)),
                ('period_key', models.CharField(help_text='The period\'s start in UTC, or "total".', max_length=40)),
                ('threshold_percent', models.PositiveSmallIntegerField()),
                ('spend_nanos', models.BigIntegerField(help_text="The period's spend when the alert was decided.")),
                ('limit_nanos', models.BigIntegerField(help_text='The cap when the alert was decided.')),
                ('decided_at', models.DateTimeField()),
                ('event_id', models.CharField(default=usage.models.new_alert_id, editable=False, max_length=40, unique=True, verbose_name='idempotency id')),
                ('budget', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='alerts', to='usage.budget')),
            ],
            options={
                'db_table': 'usage_budget_alert',
                'ordering': ['-decided_at', '-id'],
            },
        ),
        migrations.CreateModel(
            name='AlertDelivery',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('channel', models.CharField(choices=[('email', 'email'), ('webhook', 'webhook')], max_length=10)),
                ('target', models.CharField(help_text='The email address or the webhook URL.', max_length=500)),
                ('status', models.CharField(choices=[('pending', 'pending'), ('sent', 'sent'), ('failing', 'failing (retried)')], default='pending', max_length=10)),
                ('attempts', models.PositiveIntegerField(default=0)),
                ('next_attempt_at', models.DateTimeField()),
                ('claim_token', models.CharField(blank=True, default='', editable=False, max_length=32)),
                ('last_error', models.TextField(blank=True)),
                ('sent_at', models.DateTimeField(blank=True, null=True)),
                ('created_at', models.DateTimeField()),
                ('project', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='gateway.project')),
                ('alert', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='deliveries', to='usage.budgetalert')),
            ],
            options={
                'verbose_name': 'alert delivery',
                'verbose_name_plural': 'alert deliveries',
                'db_table': 'usage_alert_delivery',
                'ordering': ['-created_at', '-id'],
            },
        ),
        migrations.AddConstraint(
            model_name='budgetalert',
            constraint=models.UniqueConstraint(fields=('budget', 'subject_pk', 'period_key', 'threshold_percent'), name='usage_budget_alert_once_per_period'),
        ),
        migrations.AddIndex(
            model_name='alertdelivery',
            index=models.Index(condition=models.Q(('status__in', ['pending', 'failing'])), fields=['next_attempt_at'], name='usage_alert_delivery_due'),
        ),
        migrations.AddConstraint(
            model_name='alertdelivery',
            constraint=models.UniqueConstraint(fields=('alert', 'channel', 'target'), name='usage_alert_delivery_once_per_target'),
        ),
    ]
