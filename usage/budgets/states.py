"""Budgets' states read exactly from the database, for the pages and the API (the gateway asks its
snapshot, `book.BudgetBook`, instead)."""

from datetime import datetime

from django.db import models
from django.utils import timezone

from usage.budgets.book import SPEND_READS
from usage.budgets.periods import budget_period_bounds
from usage.budgets.rules import SCOPES, BudgetRule, BudgetState, applicable
from usage.models import Budget

def _spent(rule: BudgetRule, start: datetime | None, end: datetime, user_id: int | None = None) -> int:
    """One budget's exact spend over [start, end); for a default budget, `user_id`'s."""
    subject = user_id if rule.scope == SCOPES.DEFAULT else rule.subject_id
    if subject is None:
        return 0
    return SPEND_READS[rule.spender](start, end, {subject}).get(subject, 0)


def states_for(user_id: int, now: datetime | None = None, key_id: int | None = None,
               project_id: int | None = None) -> list[BudgetState]:
    """The budgets that apply to a user now (or to a request of one of their keys: the key's and
    its project's budgets too), with their exact spend (for pages and the API)."""
    now = now or timezone.now()
    subjects = models.Q(scope=SCOPES.DEFAULT) | models.Q(scope=SCOPES.USER, user_id=user_id)
    if key_id is not None:
        subjects |= models.Q(scope=SCOPES.KEY, key_id=key_id)
    if project_id is not None:
        subjects |= models.Q(scope=SCOPES.PROJECT, project_id=project_id)
    rules = [BudgetRule.of(b) for b in Budget.objects.filter(subjects, is_active=True).select_related(
        "user", "key", "project")]
    states = []
    for rule in applicable(rules, user_id, key_id, project_id):
        start, resets_at = budget_period_bounds(rule.period, now)
        states.append(BudgetState(rule, _spent(rule, start, now, user_id), start, resets_at))
    return states


def state_of(budget: Budget, now: datetime | None = None) -> BudgetState:
    """One budget's current period and spend (a default budget: spend is per user, so none here)."""
    now = now or timezone.now()
    start, resets_at = budget_period_bounds(budget.period, now)
    rule = BudgetRule.of(budget)
    return BudgetState(rule, _spent(rule, start, now), start, resets_at)
