"""Setting a budget as commands, the API and the admin name it: its subject by username, key prefix or
project id, its thresholds checked, created or updated in one transaction."""

from decimal import Decimal

from django.contrib.auth import get_user_model
from django.db import transaction

from usage.budgets.periods import BUDGET_PERIODS
from usage.budgets.rules import SCOPES
from usage.models import Budget
from usage.money import usd_to_nanos

def budget_subject(*, username: str | None = None, key_prefix: str | None = None,
                   project_id: str | None = None) -> tuple[str, dict]:
    """(scope, the subject field and its object) of a budget named as commands and the API name it:
    a username, a key's visible prefix, a project's public id, or none of them (the default)."""
    named = [n for n in (username, key_prefix, project_id) if n is not None]
    if len(named) > 1:
        raise ValueError("a budget is for one user, one key, one project, or the default: name one of them")
    if username is not None:
        User = get_user_model()
        try:
            return SCOPES.USER, {"user": User.objects.get(username=username)}
        except User.DoesNotExist:
            raise ValueError(f"no user named {username!r}") from None
    if key_prefix is not None:
        api_key_model = Budget._meta.get_field("key").related_model  # usage never imports gateway
        try:
            return SCOPES.KEY, {"key": api_key_model.objects.get(prefix=key_prefix)}
        except api_key_model.DoesNotExist:
            raise ValueError(f"no API key with the prefix {key_prefix!r} (keys are listed by their first "
                             "12 characters, such as cvk_AbCdEfGh)") from None
    if project_id is not None:
        project_model = Budget._meta.get_field("project").related_model
        try:
            return SCOPES.PROJECT, {"project": project_model.objects.get(public_id=project_id)}
        except project_model.DoesNotExist:
            raise ValueError(f"no project with the id {project_id!r} (ids look like proj_…)") from None
    return SCOPES.DEFAULT, {}


def alert_percents_error(percents) -> str | None:
    """Why a list of alert thresholds is refused, or None: distinct whole percents from 1 to 100."""
    if not isinstance(percents, list) or not all(isinstance(p, int) and not isinstance(p, bool) for p in percents):
        return "alert thresholds are a list of whole percents, such as [50, 80]"
    if any(not 1 <= p <= 100 for p in percents):
        return "each alert threshold is a percent from 1 to 100"
    if len(set(percents)) != len(percents):
        return "each alert threshold once"
    return None


@transaction.atomic
def set_budget(*, username: str | None = None, key_prefix: str | None = None, project_id: str | None = None,
               period: str, amount_usd: Decimal, warn_percent: int | None, active: bool,
               alert_percents: list[int] | None = None) -> tuple[Budget, bool]:
    """Create or update the budget of a user, a key, a project (or the default) for a period.
    `alert_percents` None keeps a budget's thresholds as they are ([] for a new one)."""
    if period not in BUDGET_PERIODS:
        raise ValueError(f"the period must be one of {', '.join(BUDGET_PERIODS)}")
    if warn_percent is not None and not 1 <= warn_percent <= 100:
        raise ValueError("the warning threshold is a percent from 1 to 100")
    if alert_percents is not None:
        if error := alert_percents_error(alert_percents):
            raise ValueError(error)
        alert_percents = sorted(alert_percents)
    scope, subject = budget_subject(username=username, key_prefix=key_prefix, project_id=project_id)
    values = {"limit_nanos": usd_to_nanos(amount_usd), "warn_percent": warn_percent, "is_active": active}
    if alert_percents is not None:
        values["alert_percents"] = alert_percents
    budget, created = Budget.objects.select_for_update().get_or_create(scope=scope, period=period, **subject,
                                                                        defaults=values)
    if not created:
        for name, value in values.items():
            setattr(budget, name, value)
        budget.save()
    return budget, created
