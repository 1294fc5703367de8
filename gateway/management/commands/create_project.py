from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from gateway.models import Project


class Command(BaseCommand):
    help = ("Create a project (a team, an application, a customer) with its owners and members. "
            "Its public id is printed alone on the last line.")

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--owner", action="append", default=[], metavar="USER", help="An owner (repeatable).")
        parser.add_argument("--member", action="append", default=[], metavar="USER", help="A member (repeatable).")
        parser.add_argument("--description", default="")

    def handle(self, name, owner, member, description, **options):
        try:
            project = Project.objects.create_project(name, description, owners=users(owner), members=users(member))
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        self.stderr.write(f"Created project {project.name} with {len(owner)} owner(s) and {len(member)} member(s).")
        self.stdout.write(project.public_id)


def users(usernames: list[str]) -> list:
    User = get_user_model()
    found = {u.get_username(): u for u in User.objects.filter(**{f"{User.USERNAME_FIELD}__in": usernames})}
    missing = [name for name in usernames if name not in found]
    if missing:
        raise CommandError(f"No user named {', '.join(map(repr, missing))}. Create them first (manage.py createsuperuser).")
    return [found[name] for name in dict.fromkeys(usernames)]
