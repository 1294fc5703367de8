from django.core.management import call_command
from django.core.management.base import BaseCommand

from codevector.local import set_up_local


class Command(BaseCommand):
    help = "Local demo set-up for `make run`: admin account, demo facades on the mock upstream, demo key and history."

    def add_arguments(self, parser):
        parser.add_argument("--mock-url", default="http://127.0.0.1:8001")
        parser.add_argument("--url", default="http://127.0.0.1:8000", help="Where the web server will listen.")

    def handle(self, mock_url, url, **options):
        setup = set_up_local(mock_url)
        call_command("seed_demo", stdout=self.stdout, stderr=self.stderr)
        call_command("setup_schedules", stdout=self.stdout, stderr=self.stderr)
        names = ", ".join(f.name for f in setup.facades)
        self.stdout.write("")
        self.stdout.write(f"  Admin:     {url}/admin/")
        if setup.username:
            shown = setup.password or "(set before; reset with manage.py changepassword admin)"
            self.stdout.write(f"  Username:  {setup.username}")
            self.stdout.write(f"  Password:  {shown}   (kept in var/admin-password.txt)")
        if setup.new_api_key:
            self.stdout.write(f"  API key:   {setup.new_api_key}   (shown once; kept in var/demo-api-key.txt)")
        else:
            self.stdout.write("  API key:   in var/demo-api-key.txt")
        self.stdout.write(f"  Gateway:   {url}/v1/  models: {names}")
        self.stdout.write("")
