"""Projects: a team, an application or a customer; every API key belongs to one."""

import secrets

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.color import no_style
from django.db import connections, models, transaction

# The project every key belongs to unless created in another: a fixed primary key, because the
# column's database default names it, so a key inserted by raw SQL (the ledger's reserved keys,
# usage.sql.ensure_reserved_keys) or by a process still on code from before projects lands there.
DEFAULT_PROJECT_ID = 1
DEFAULT_PROJECT_PUBLIC_ID = "proj_default"
DEFAULT_PROJECT_NAME = "Default project"
DEFAULT_PROJECT_DESCRIPTION = "Every user's project: keys created without a project, and keys from before projects."
PROJECT_ID_PREFIX = "proj_"


def new_project_public_id() -> str:
    return PROJECT_ID_PREFIX + secrets.token_urlsafe(12)  # 96 bits: not guessable, short enough to type


class ProjectQuerySet(models.QuerySet):
    def for_user(self, user):
        """The projects `user` belongs to: the one rule for membership. Every user is a member of
        the Default project without a row saying so; of any other, by a ProjectMember row."""
        user_id = getattr(user, "pk", None)  # None, an anonymous user: the Default project only
        mine = ProjectMember.objects.filter(user_id=user_id).values("project")
        return self.filter(models.Q(pk=DEFAULT_PROJECT_ID) | models.Q(pk__in=mine))


class ProjectManager(models.Manager.from_queryset(ProjectQuerySet)):
    def default(self) -> "Project":
        return self.get(pk=DEFAULT_PROJECT_ID)

    def ensure_default(self, using: str = "default") -> None:
        """Create the Default project unless it exists (after a test's flush: see GatewayConfig)."""
        _, created = self.db_manager(using).get_or_create(
            pk=DEFAULT_PROJECT_ID, defaults={"public_id": DEFAULT_PROJECT_PUBLIC_ID, "name": DEFAULT_PROJECT_NAME,
                                             "description": DEFAULT_PROJECT_DESCRIPTION})
        if created:  # an explicit primary key leaves PostgreSQL's sequence behind: the next project would clash
            with connections[using].cursor() as cursor:
                for statement in connections[using].ops.sequence_reset_sql(no_style(), [self.model]):
                    cursor.execute(statement)

    def create_project(self, name: str, description: str = "", owners=(), members=()) -> "Project":
        """A project with its owners and members, all or nothing."""
        owners, members = list(owners), list(members)
        both = {u.pk for u in owners} & {u.pk for u in members}
        if both:
            names = sorted(u.get_username() for u in owners if u.pk in both)
            raise ValidationError(f"{', '.join(names)}: an owner or a member, not both.")
        project = self.model(name=name, description=description)
        project.full_clean()
        with transaction.atomic():
            project.save()
            ProjectMember.objects.bulk_create(
                [ProjectMember(project=project, user=u, role=ProjectMember.Role.OWNER) for u in owners]
                + [ProjectMember(project=project, user=u, role=ProjectMember.Role.MEMBER) for u in members])
        return project


class Project(models.Model):
    """A team, an application or a customer: every API key belongs to one, fixed when it is created,
    so a project's usage is its keys' usage."""

    name = models.CharField(max_length=100, unique=True, error_messages={
        "unique": "A project with this name already exists: choose another name."})
    # How commands, the API and people name a project: never reused, never edited.
    public_id = models.CharField("public id", max_length=40, unique=True, editable=False,
                                 default=new_project_public_id)
    description = models.TextField(blank=True)
    is_active = models.BooleanField("active", default=True,
                                    help_text="An inactive project gets no new keys and its keys are refused, as revoked ones "
                                              "are, until it is active again; its usage stays.")
    created_at = models.DateTimeField(auto_now_add=True)
    # Budget alerts of this project and of its keys are also posted here (usage.budgets.alerts), signed with
    # the secret (HMAC-SHA256 of the body). The secret is write-only: never shown once saved, never logged.
    alert_webhook_url = models.URLField(
        "alert webhook URL", max_length=500, blank=True,
        help_text="Budget alerts of this project and its keys are POSTed here as signed JSON. Empty: none.")
    alert_webhook_secret = models.CharField(
        "alert webhook secret", max_length=200, blank=True,
        help_text="Signs each alert (X-CodeVector-Signature: sha256=HMAC-SHA256 of the body). Needed with a URL.")

    objects = ProjectManager()

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    @property
    def is_default(self) -> bool:
        return self.pk == DEFAULT_PROJECT_ID

    def clean(self):
        super().clean()
        if self.is_default and not self.is_active:
            raise ValidationError({"is_active": "The Default project stays active: keys without a project go there."})
        if self.alert_webhook_url and not self.alert_webhook_secret:
            raise ValidationError({"alert_webhook_secret": "A webhook URL needs a secret: alerts are never sent unsigned."})

    def has_member(self, user) -> bool:
        return Project.objects.for_user(user).filter(pk=self.pk).exists()

    def key_refusal(self, user) -> str | None:
        """Why a key for `user` cannot be created in this project, or None: the one rule that
        create_key, the admin's key form and `create_api_key --project` share."""
        if not self.is_active:
            return f"Project {self.name} ({self.public_id}) is inactive: it gets no new keys."
        if not self.has_member(user):
            return (f"{user.get_username()} is not a member of project {self.name} ({self.public_id}): "
                    "add them to the project first, or create the key in another project.")
        return None


class ProjectMember(models.Model):
    """A user's membership of a project other than the Default one (everyone is a member of that)."""

    class Role(models.TextChoices):
        MEMBER = "member", "Member"
        OWNER = "owner", "Owner"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="members")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="project_memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "user"], name="gateway_project_member_once")]
        verbose_name = "project member"

    def __str__(self):
        return f"{self.user} ({self.role}) in {self.project}"

