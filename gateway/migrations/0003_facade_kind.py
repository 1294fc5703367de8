from django.db import migrations, models


def embeddings_by_name(apps, schema_editor):
    """Existing facades are chat models, except those whose upstream model is an embeddings model
    by its name (OpenAI's text-embedding-*, the demo's included): they keep answering
    /v1/embeddings. Anything else can be changed with `create_facade NAME --kind embeddings`."""
    apps.get_model("gateway", "ModelFacade").objects.filter(
        provider="openai", upstream_model__icontains="embedding").update(kind="embeddings")


class Migration(migrations.Migration):
    """Facades get a kind (chat or embeddings)."""

    dependencies = [("gateway", "0002_unique_key_prefix")]

    operations = [
        migrations.AddField(
            model_name="modelfacade",
            name="kind",
            field=models.CharField(
                choices=[("chat", "Chat (responses, chat completions, messages)"), ("embeddings", "Embeddings")],
                default="chat",
                help_text="Chat models answer /v1/responses, /v1/chat/completions and /v1/messages; "
                          "embeddings models answer /v1/embeddings.",
                max_length=20,
            ),
        ),
        migrations.RunPython(embeddings_by_name, migrations.RunPython.noop),
    ]
