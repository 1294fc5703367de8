"""Budgets gain an explicit scope (user, key, project, default): before, "no user" meant default
in every rule, so a project budget would have read as a second default. Existing budgets keep
their meaning: with a user, scope user; without, scope default."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def name_the_defaults(apps, schema_editor):
    apps.get_model("usage", "Budget").objects.filter(user__isnull=True).update(scope="default")


class Migration(migrations.Migration):

    dependencies = [
        ('gateway', '0007_projects'),
        ('usage', '0013_billed_quantities'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterModelOptions(
            name='budget',
            options={'ordering': ['scope', 'period', 'id']},
        ),
        migrations.RemoveConstraint(
            model_name='budget',
            name='usage_budget_one_per_user_period',
        ),
        migrations.RemoveConstraint(
            model_name='budget',
            name='usage_budget_one_default_per_period',
        ),
        migrations.AddField(
            model_name='budget',
            name='alert_percents',
            field=models.JSONField(blank=True, default=list, help_text='Alert when spend reaches these percents of the cap, e.g. [50, 80].'),
        ),
        migrations.AddField(
            model_name='budget',
            name='key',
            field=models.ForeignKey(blank=True, help_text='For an API key budget.', null=True, on_delete=django.db.models.deletion.CASCADE, related_name='budgets', to='gateway.apikey'),
        ),
        migrations.AddField(
            model_name='budget',
            name='project',
            field=models.ForeignKey(blank=True, help_text='For a project budget.', null=True, on_delete=django.db.models.deletion.CASCADE, related_name='budgets', to='gateway.project'),
        ),
        migrations.AddField(
            model_name='budget',
            name='scope',
            field=models.CharField(choices=[('user', 'user'), ('key', 'API key'), ('project', 'project'), ('default', 'default (every user without their own)')], default='user', max_length=10),
            preserve_default=False,
        ),
        migrations.RunPython(name_the_defaults, migrations.RunPython.noop),
        migrations.AlterField(
            model_name='budget',
            name='user',
            field=models.ForeignKey(blank=True, help_text='For a user budget.', null=True, on_delete=django.db.models.deletion.CASCADE, related_name='budgets', to=settings.AUTH_USER_MODEL),
        ),
        migrations.AddConstraint(
            model_name='budget',
            constraint=models.UniqueConstraint(condition=models.Q(('scope', 'user')), fields=('user', 'period'), name='usage_budget_one_per_user_period', violation_error_message='There is already a budget for this user and period.'),
        ),
        migrations.AddConstraint(
            model_name='budget',
            constraint=models.UniqueConstraint(condition=models.Q(('scope', 'key')), fields=('key', 'period'), name='usage_budget_one_per_key_period', violation_error_message='There is already a budget for this API key and period.'),
        ),
        migrations.AddConstraint(
            model_name='budget',
            constraint=models.UniqueConstraint(condition=models.Q(('scope', 'project')), fields=('project', 'period'), name='usage_budget_one_per_project_period', violation_error_message='There is already a budget for this project and period.'),
        ),
        migrations.AddConstraint(
            model_name='budget',
            constraint=models.UniqueConstraint(condition=models.Q(('scope', 'default')), fields=('period',), name='usage_budget_one_default_per_period', violation_error_message='There is already a default budget for this period.'),
        ),
        migrations.AddConstraint(
            model_name='budget',
            constraint=models.CheckConstraint(condition=models.Q(models.Q(('key__isnull', True), ('project__isnull', True), ('scope', 'user'), ('user__isnull', False)), models.Q(('key__isnull', False), ('project__isnull', True), ('scope', 'key'), ('user__isnull', True)), models.Q(('key__isnull', True), ('project__isnull', False), ('scope', 'project'), ('user__isnull', True)), models.Q(('key__isnull', True), ('project__isnull', True), ('scope', 'default'), ('user__isnull', True)), _connector='OR'), name='usage_budget_scope_names_its_subject'),
        ),
    ]
