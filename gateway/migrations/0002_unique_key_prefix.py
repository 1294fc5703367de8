from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("gateway", "0001_initial")]

    operations = [
        migrations.AlterField(
            model_name="apikey",
            name="prefix",
            field=models.CharField(editable=False, max_length=12, unique=True),
        ),
    ]
