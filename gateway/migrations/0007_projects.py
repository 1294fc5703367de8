"""Projects (#30): the Default project, with the fixed primary key 1 and the public id proj_default,
then every API key in it through the column's database default, which stays for keys inserted by
raw SQL (usage.sql.ensure_reserved_keys) and by processes still running code from before this
migration. Usage rows name keys, not projects: no total moves."""

import django.db.models.deletion
import gateway.models
from django.conf import settings
from django.core.management.color import no_style
from django.db import migrations, models


def default_project(apps, schema_editor):
    Project = apps.get_model("gateway", "Project")
    Project.objects.using(schema_editor.connection.alias).create(
        pk=1, public_id="proj_default", name="Default project",
        description="Every user's project: keys created without a project, and keys from before projects.")
    # The explicit primary key leaves PostgreSQL's identity sequence at its start: the next project would clash.
    for statement in schema_editor.connection.ops.sequence_reset_sql(no_style(), [Project]):
        schema_editor.execute(statement)


class Migration(migrations.Migration):

    dependencies = [
        ('gateway', '0006_facade_transport'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='Project',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('name', models.CharField(error_messages={'unique': 'A project with this name already exists: choose another name.'}, max_length=100, unique=True)),
                ('public_id', models.CharField(default=gateway.models.new_project_public_id, editable=False, max_length=40, unique=True, verbose_name='public id')),
                ('description', models.TextField(blank=True)),
                ('is_active', models.BooleanField(default=True, help_text='An inactive project gets no new keys; its keys and usage stay.', verbose_name='active')),
                ('created_at', models.DateTimeField(auto_now_add=True)),
            ],
            options={
                'ordering': ['name'],
            },
        ),
        migrations.RunPython(default_project, migrations.RunPython.noop),
        migrations.AddField(
            model_name='apikey',
            name='project',
            field=models.ForeignKey(db_default=1, default=1, on_delete=django.db.models.deletion.PROTECT, related_name='api_keys', to='gateway.project'),
        ),
        migrations.CreateModel(
            name='ProjectMember',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('role', models.CharField(choices=[('member', 'Member'), ('owner', 'Owner')], default='member', max_length=10)),
                ('project', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='members', to='gateway.project')),
                ('user', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='project_memberships', to=settings.AUTH_USER_MODEL)),
            ],
            options={
                'verbose_name': 'project member',
                'constraints': [models.UniqueConstraint(fields=('project', 'user'), name='gateway_project_member_once')],
            },
        ),
    ]
