"""Demo data for `make run` and `manage.py seed_demo`: the demo facades (pointing at the mock
upstream, priced from the price catalog's models of the same names), demo users with keys, and
months of usage written through the ledger at past times.

The history has a weekday rhythm (quiet weekends), a few heavy users and favourite models, and a
growth trend (more users join and everyone uses more as the weeks pass). Everything random comes
from one `random.Random(seed)`, so a seed and a day give the same history.
"""

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from gateway.models import ModelFacade, Project, ProjectMember
from gateway.price_catalog import facade_price_fields
from usage import rollups
from usage.ledger.delta import UsageDelta
from usage.ledger.plan import record_many
from usage.budgets.periods import budget_period_bounds
from usage.budgets.setting import set_budget
from usage.models import DailyUsage, FiveMinuteUsage, HourlyUsage, MonthlyUsage
from usage.calendar import local_date, local_midnight, zone
from usage.reads.spend import spend_by_project
from usage.pricing import cost_nanos

DEMO_FACADES = [
    # name (also the upstream model the mock upstream answers as), provider, the price catalog's model
    ("gpt-4o-mini", "openai", "openai:gpt-4o-mini"),
    ("gpt-4o", "openai", "openai:gpt-4o"),
    ("text-embedding-3-small", "openai", "openai:text-embedding-3-small"),
    ("claude-sonnet-4-5", "anthropic", "anthropic:claude-sonnet-4-5"),
    ("claude-haiku-4-5", "anthropic", "anthropic:claude-haiku-4-5"),
]
EMBEDDINGS_FACADES = {"text-embedding-3-small"}  # the demo facades of kind embeddings; the rest are chat


def ensure_demo_facades(mock_url: str) -> list[ModelFacade]:
    """Create the demo facades that are missing, priced from the catalog (tiers, variants, search
    calls and all, with their catalog_ref, so `manage.py prices` checks them); existing ones (and an
    admin's edits) are kept."""
    mock_url = mock_url.rstrip("/")
    facades = []
    for name, provider, catalog_ref in DEMO_FACADES:
        facade = ModelFacade.objects.filter(name=name).first()
        if facade is None:  # the catalog is read only for a facade to create
            facade, _ = ModelFacade.objects.get_or_create(
                name=name,
                defaults=dict(
                    provider=provider,
                    base_url=f"{mock_url}/v1" if provider == "openai" else mock_url,
                    upstream_model=name,
                    kind=ModelFacade.Kind.EMBEDDINGS if name in EMBEDDINGS_FACADES else ModelFacade.Kind.CHAT,
                    **facade_price_fields(catalog_ref),
                ),
            )
        facades.append(facade)
    return facades


DEMO_EMAIL_DOMAIN = "demo.codevector.invalid"
DEMO_NAMES = [
    ("ada", "Lovelace"), ("grace", "Hopper"), ("alan", "Turing"), ("barbara", "Liskov"), ("edsger", "Dijkstra"),
    ("margaret", "Hamilton"), ("donald", "Knuth"), ("frances", "Allen"), ("ken", "Thompson"), ("radia", "Perlman"),
    ("john", "McCarthy"), ("katherine", "Johnson"), ("dennis", "Ritchie"), ("adele", "Goldberg"), ("tony", "Hoare"),
    ("sophie", "Wilson"), ("guido", "Rossum"), ("hedy", "Lamarr"), ("leslie", "Lamport"), ("shafi", "Goldwasser"),
    ("niklaus", "Wirth"), ("jean", "Sammet"), ("bjarne", "Stroustrup"), ("karen", "Sparck Jones"),
    ("vint", "Cerf"), ("annie", "Easley"), ("linus", "Torvalds"), ("mary", "Keller"), ("whitfield", "Diffie"),
    ("evelyn", "Boyd Granville"),
]
# Facade name -> (share of traffic, mean input tokens, mean output tokens, cached share, cache-write share).
MODEL_MIX = {
    "gpt-4o-mini": (0.36, 1_800, 350, 0.25, 0.0),
    "claude-sonnet-4-5": (0.24, 6_500, 900, 0.45, 0.06),
    "gpt-4o": (0.14, 3_200, 600, 0.20, 0.0),
    "claude-haiku-4-5": (0.14, 2_500, 400, 0.35, 0.04),
    "text-embedding-3-small": (0.12, 600, 0, 0.0, 0.0),
}
WEEKDAY_FACTOR = [1.0, 1.08, 1.1, 1.05, 0.9, 0.28, 0.2]  # Monday first
WORK_HOURS = list(range(7, 22))
HOUR_WEIGHTS = [1, 3, 6, 8, 8, 5, 6, 8, 7, 6, 4, 3, 2, 2, 1]
REQUESTS_PER_DAY = 45  # for a user of weight 1, on a weekday, at the end of the history

# The demo's teams: (name, description, the monthly budget as a multiple of this month's spend so far,
# alert thresholds). Users join them in turn (the first of each is its owner); every key of a user
# goes to their team. One team is near its cap, one past its first alert, one far from both.
DEMO_PROJECTS = [
    ("Support assistant", "The customer-support chatbot and its evaluation runs.", "1.15", [50, 80, 100]),
    ("Search", "Query understanding and document embeddings for site search.", "1.6", [50, 80]),
    ("Data platform", "Batch enrichment jobs and the analysts' notebooks.", "4", [80]),
]


@dataclass(frozen=True)
class Profile:
    user_id: int
    weight: float  # heavy users weigh several times the median
    joined_day: int  # day index from which the user is active
    model_weights: tuple[float, ...]
    key_ids: tuple[int, ...]  # the user's API keys; their requests alternate between them


@dataclass
class SeedResult:
    skipped: bool = False
    users_created: int = 0
    keys_created: int = 0
    requests: int = 0
    cost_nanos: int = 0
    usernames: list[str] = field(default_factory=list)


def has_usage() -> bool:
    return any(model.objects.exists() for model in (FiveMinuteUsage, HourlyUsage, DailyUsage, MonthlyUsage))


def seed_demo(*, days: int = 90, users: int = 25, seed: int = 0, force: bool = False, now: datetime | None = None,
              mock_url: str = "http://127.0.0.1:8001") -> SeedResult:
    """Create demo users, keys and facades and record a history; nothing if usage exists and not `force`."""
    if days < 1 or users < 1:
        raise ValueError("days and users must be at least 1")
    if has_usage() and not force:
        return SeedResult(skipped=True)
    now = now or timezone.now()
    facades = ensure_demo_facades(mock_url)
    result = SeedResult()
    projects = ensure_demo_projects()
    demo_users = ensure_demo_users(users, result, projects)
    rng = random.Random(seed)
    profiles = make_profiles(rng, demo_users, len(facades), days)
    deltas = list(generate_history(rng, profiles, facades, days, now, seed))
    for offset in range(0, len(deltas), 5_000):
        record_many(deltas[offset : offset + 5_000])
    result.requests = sum(d.requests for d in deltas)
    result.cost_nanos = sum(d.cost_nanos for d in deltas)
    rollups.roll_up()
    ensure_demo_budgets(projects, now)
    return result


@transaction.atomic
def ensure_demo_projects() -> list[Project]:
    """The demo teams (existing ones, and an admin's edits of them, are kept)."""
    return [Project.objects.get_or_create(name=name, defaults={"description": description})[0]
            for name, description, *_ in DEMO_PROJECTS]


def ensure_demo_budgets(projects: list[Project], now: datetime) -> None:
    """A monthly budget per demo team, sized from this month's spend so far (whole dollars), with
    alerts; created once (an admin's changes are kept)."""
    start, _ = budget_period_bounds("monthly", now)
    spent = spend_by_project(start, now, {p.pk for p in projects})
    for project, (_, _, multiple, alerts) in zip(projects, DEMO_PROJECTS):
        if project.budgets.exists():
            continue
        cap = max(Decimal(1), (Decimal(spent.get(project.pk, 0)) * Decimal(multiple) / 10**9).quantize(Decimal(1)))
        set_budget(project_id=project.public_id, period="monthly", amount_usd=cap, warn_percent=80, active=True,
                   alert_percents=alerts)


@transaction.atomic
def ensure_demo_users(count: int, result: SeedResult, projects: list[Project]) -> list:
    """The first `count` demo users, created with keys where missing (unusable passwords: demo
    users never log in; their keys are never shown), each in one of the demo teams, where their keys go."""
    User = get_user_model()
    users = []
    for index in range(count):
        first, last = DEMO_NAMES[index] if index < len(DEMO_NAMES) else (f"demo{index + 1:03d}", "Demo")
        username = f"{first}.{last.split()[0].lower()}" if index < len(DEMO_NAMES) else first
        user, created = User.objects.get_or_create(
            username=username, defaults={"first_name": first.capitalize(), "last_name": last,
                                         "email": f"{username}@{DEMO_EMAIL_DOMAIN}"})
        if created:
            user.set_unusable_password()
            user.save(update_fields=["password"])
            result.users_created += 1
            project = projects[index % len(projects)]
            role = ProjectMember.Role.OWNER if index < len(projects) else ProjectMember.Role.MEMBER
            ProjectMember.objects.get_or_create(project=project, user=user, defaults={"role": role})
            for name in ["laptop", "ci"] if index % 4 == 0 else ["laptop"]:
                user.api_keys.model.objects.create_key(user, name=f"demo {name}", project=project)
                result.keys_created += 1
        users.append(user)
    result.usernames = [u.username for u in users]
    return users


def make_profiles(rng: random.Random, users: list, facade_count: int, days: int) -> list[Profile]:
    profiles = []
    for index, user in enumerate(users):
        weight = min(rng.paretovariate(1.4), 12.0)
        # Most users are there from the start; the rest join along the way (the growth trend).
        joined = 0 if index < max(1, len(users) * 3 // 5) else rng.randrange(0, max(1, days * 3 // 4))
        model_weights = tuple(rng.uniform(0.2, 1.8) for _ in range(facade_count))
        key_ids = tuple(user.api_keys.order_by("pk").values_list("pk", flat=True))
        profiles.append(Profile(user.pk, weight, joined, model_weights, key_ids))
    return profiles


def generate_history(rng: random.Random, profiles: list[Profile], facades: list, days: int, now: datetime,
                     seed: int):
    """Deltas for each user and day, each summing a few requests in one working hour."""
    tz = zone()
    today = local_date(now, tz)
    mix = [MODEL_MIX.get(f.name, (0.1, 2_000, 400, 0.0, 0.0)) for f in facades]
    number = 0
    for day_index in range(days):
        day = today - timedelta(days=days - 1 - day_index)
        midnight = local_midnight(day, tz)
        growth = 0.45 + 0.55 * day_index / max(1, days - 1)
        for profile in profiles:
            if day_index < profile.joined_day:
                continue
            expected = REQUESTS_PER_DAY * profile.weight * WEEKDAY_FACTOR[day.weekday()] * growth
            requests = int(expected * rng.lognormvariate(0, 0.35))
            hours = rng.choices(WORK_HOURS, HOUR_WEIGHTS, k=min(requests, rng.randint(2, 6)))
            weights = [share * personal for (share, *_), personal in zip(mix, profile.model_weights)]
            for slot, hour in enumerate(hours):
                count = requests // len(hours) + (1 if slot < requests % len(hours) else 0)
                at = midnight + timedelta(hours=hour, minutes=rng.randrange(60), seconds=rng.randrange(60))
                which = rng.choices(range(len(facades)), weights)[0]
                if at > now or count == 0:
                    continue
                number += 1
                # Requests alternate between the user's keys (no draw from rng: the history stays the same).
                key_id = profile.key_ids[number % len(profile.key_ids)] if profile.key_ids else None
                yield _delta(rng, f"demo-{seed}-{number}", profile.user_id, key_id, facades[which], mix[which], at,
                             count)


def _delta(rng, delta_id, user_id, key_id, facade, mix, at, requests) -> UsageDelta:
    _, mean_in, mean_out, cached_share, write_share = mix
    input_tokens = int(requests * mean_in * rng.lognormvariate(0, 0.3))
    output_tokens = int(requests * mean_out * rng.lognormvariate(0, 0.3))
    cached = int(input_tokens * cached_share * rng.uniform(0.5, 1.5)) if cached_share else 0
    written = int(input_tokens * write_share * rng.uniform(0.5, 1.5)) if write_share else 0
    cached = min(cached, input_tokens - written)
    errors = sum(1 for _ in range(min(requests, 50)) if rng.random() < 0.012)
    cost = cost_nanos(facade.prices, input_tokens=input_tokens, cached_input_tokens=cached,
                      cache_write_tokens=written, output_tokens=output_tokens)
    return UsageDelta(id=delta_id, user_id=user_id, key_id=key_id, facade_id=facade.pk, at=at, requests=requests,
                             error_requests=errors, input_tokens=input_tokens, cached_input_tokens=cached,
                             cache_write_tokens=written, output_tokens=output_tokens, cost_nanos=cost)

