from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from gateway.models import ApiKey, Project


class Command(BaseCommand):
    help = "Create an API key for a user. The key is printed once, alone on the last line."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="A label to tell keys apart.")
        parser.add_argument("--expires", type=int, metavar="DAYS", help="Expire after this many days.")
        parser.add_argument("--project", metavar="PROJECT_ID",
                            help="The project's public id (proj_...), one the user belongs to. Default: the Default project.")

    def handle(self, username, name, expires, project, **options):
        User = get_user_model()
        try:
            user = User.objects.get(username=username)
        except User.DoesNotExist:
            raise CommandError(f"No user named {username!r}. Create one first (manage.py createsuperuser).") from None
        if not user.is_active:
            raise CommandError(f"User {username!r} is inactive; their keys would be refused.")
        if expires is not None and expires < 1:
            raise CommandError("--expires takes a whole number of days, at least 1.")
        if len(name) > 100:
            raise CommandError("--name is at most 100 characters.")
        project = find_project(project) if project else Project.objects.default()
        try:  # a project that refuses the key (Project.key_refusal) says why
            api_key, raw = ApiKey.objects.create_key(user, name=name, expires_in_days=expires, project=project)
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        expiry = f", expires {api_key.expires_at:%Y-%m-%d %H:%M %Z}" if api_key.expires_at else ""
        self.stderr.write(f"Created key {api_key.prefix}… for {username} in {project.name}{expiry}. It is shown only now:")
        self.stdout.write(raw)


def find_project(public_id: str) -> Project:
    try:
        return Project.objects.get(public_id=public_id)
    except Project.DoesNotExist:
        raise CommandError(f"No project with the id {public_id!r}: `manage.py create_project` prints a new "
                           "project's id; the admin's project list shows every id.") from None
