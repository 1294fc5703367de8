import json
from decimal import Decimal, InvalidOperation

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from gateway.models import ModelFacade
from gateway.models.facades import USD_PRICES
from usage.money import usd_to_micros
from usage.pricing import PriceError, parse_rules


def flag(option: str) -> str:
    return f"--{option.replace('_', '-')}"


def parse_price(option: str, raw: str) -> int:
    """A price option in USD as integer micro-USD, by the admin form's rule (usage.money.usd_to_micros)."""
    try:
        usd = Decimal(raw)
    except InvalidOperation:
        per = USD_PRICES[option].per
        raise CommandError(f"{flag(option)} {raw!r} is not a number (USD per {per}, such as 0.15)") from None
    try:
        return usd_to_micros(usd)
    except ValueError as exc:
        raise CommandError(f"{flag(option)} {raw!r}: {exc}") from None


def parse_price_rules(raw: str) -> dict:
    """--price-rules: usage.pricing's JSON form, checked here by the rule ModelFacade.clean applies
    (usage.pricing.parse_rules), so that the error names the option as well as the bad field."""
    try:
        rules = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CommandError(f"--price-rules is not JSON ({exc})") from None
    try:
        parse_rules(rules)
    except PriceError as exc:
        raise CommandError(f"--price-rules: {exc}") from None
    return rules or {}


def catalog_fields(ref: str) -> tuple[dict, tuple[str, ...]]:
    """The facade's price fields from the catalog, and what the catalog prices that a facade cannot express."""
    from gateway.price_catalog import CatalogError, catalog_prices, facade_price_fields  # loads the catalog: only when asked

    try:
        return facade_price_fields(ref), catalog_prices(ref).ignored
    except CatalogError as exc:
        raise CommandError(f"--catalog {exc}") from None


class Command(BaseCommand):
    help = ("Create or update a model facade. Token prices are USD per million tokens, search prices USD per "
            "1,000 calls; --catalog PROVIDER:MODEL fills every price from the price catalog (genai-prices), and "
            "price options given beside it override the catalog's. Options left out keep their values.")

    def add_arguments(self, parser):
        parser.add_argument("name", help="The public model name clients send.")
        parser.add_argument("--provider", choices=ModelFacade.Provider.values)
        parser.add_argument("--kind", choices=ModelFacade.Kind.values,
                            help="chat (the default for a new facade) or embeddings: which endpoints answer it.")
        parser.add_argument("--base-url", help="e.g. https://api.openai.com/v1 or https://api.anthropic.com")
        parser.add_argument("--upstream-model")
        parser.add_argument("--api-key-env", help="Environment variable that holds the upstream key: a name starting "
                                                  "with CODEVECTOR_UPSTREAM_, or one of GATEWAY_UPSTREAM_KEY_VARIABLES.")
        parser.add_argument("--openai-organization", help="Sent upstream as OpenAI-Organization (who pays).")
        parser.add_argument("--openai-project", help="Sent upstream as OpenAI-Project (who pays).")
        parser.add_argument("--catalog", metavar="PROVIDER:MODEL",
                            help="Take every price (tiers and variants too) from this price catalog model, "
                                 "such as anthropic:claude-sonnet-4-5; `manage.py prices` checks them later.")
        for option, price in USD_PRICES.items():
            parser.add_argument(flag(option), metavar="USD", help=f"USD per {price.per}.")
        parser.add_argument("--price-rules", metavar="JSON",
                            help='Long-context tiers and service-tier or speed variants, as {"tiers": [...], '
                                 '"variants": {...}} in micro-USD (see usage/pricing.py).')
        parser.add_argument("--inactive", action="store_true", help="Deactivate the facade.")

    def handle(self, name, **options):
        facade = ModelFacade.objects.filter(name=name).first()
        created = facade is None
        if created:
            missing = [flag(o) for o in ("provider", "base_url") if not options[o]]
            if missing:
                raise CommandError(f"A new facade needs {' and '.join(missing)}.")
            facade = ModelFacade(name=name)
        for option in ("provider", "kind", "base_url", "upstream_model", "api_key_env", "openai_organization",
                       "openai_project"):
            if options[option] is not None:
                setattr(facade, option, options[option])
        # The catalog first, so that explicit prices beside it override its own.
        ignored = ()
        if options["catalog"]:
            fields, ignored = catalog_fields(options["catalog"])
            for field, value in fields.items():
                setattr(facade, field, value)
        for option, price in USD_PRICES.items():
            if options[option] is not None:
                setattr(facade, price.column, parse_price(option, options[option]))
        if options["price_rules"] is not None:
            facade.price_rules = parse_price_rules(options["price_rules"])
        if options["inactive"]:
            facade.is_active = False
        try:
            facade.full_clean()  # the facade's rules, the admin form's too: ModelFacade.clean
        except ValidationError as exc:
            problems = "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in exc.message_dict.items())
            raise CommandError(f"Invalid facade: {problems}") from None
        facade.save()  # an empty upstream model becomes the public name here
        source = f", prices from {facade.catalog_ref} ({facade.catalog_version})" if options["catalog"] else ""
        self.stdout.write(f"{'Created' if created else 'Updated'} facade {facade.name} -> {facade.provider} "
                          f"{facade.base_url} ({facade.upstream_model}, {facade.kind}){source}")
        if ignored:
            self.stdout.write(f"Not expressible on a facade (billed within their parent quantities): {', '.join(ignored)}")
