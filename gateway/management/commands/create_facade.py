from decimal import Decimal, InvalidOperation

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from gateway.models import ModelFacade
from usage.money import usd_to_micros

PRICE_OPTIONS = {
    "input_price": "input_price_micros",
    "cached_input_price": "cached_input_price_micros",
    "cache_write_price": "cache_write_price_micros",
    "output_price": "output_price_micros",
}


def parse_price(option: str, raw: str) -> int:
    flag = f"--{option.replace('_', '-')}"
    try:
        usd = Decimal(raw)
    except InvalidOperation:
        raise CommandError(f"{flag} {raw!r} is not a number (USD per million tokens, such as 0.15)") from None
    try:
        return usd_to_micros(usd)
    except ValueError as exc:
        raise CommandError(f"{flag} {raw!r}: {exc}") from None


class Command(BaseCommand):
    help = "Create or update a model facade. Prices are USD per million tokens; options left out keep their values."

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
        for option in PRICE_OPTIONS:
            parser.add_argument(f"--{option.replace('_', '-')}", metavar="USD")
        parser.add_argument("--inactive", action="store_true", help="Deactivate the facade.")

    def handle(self, name, **options):
        facade = ModelFacade.objects.filter(name=name).first()
        created = facade is None
        if created:
            missing = [f"--{o.replace('_', '-')}" for o in ("provider", "base_url") if not options[o]]
            if missing:
                raise CommandError(f"A new facade needs {' and '.join(missing)}.")
            facade = ModelFacade(name=name)
        for option in ("provider", "kind", "base_url", "upstream_model", "api_key_env", "openai_organization",
                       "openai_project"):
            if options[option] is not None:
                setattr(facade, option, options[option])
        for option, field in PRICE_OPTIONS.items():
            if options[option] is not None:
                setattr(facade, field, parse_price(option, options[option]))
        if options["inactive"]:
            facade.is_active = False
        if not facade.upstream_model:
            facade.upstream_model = name
        try:
            facade.full_clean()
        except ValidationError as exc:
            problems = "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in exc.message_dict.items())
            raise CommandError(f"Invalid facade: {problems}") from None
        facade.save()
        self.stdout.write(f"{'Created' if created else 'Updated'} facade {facade.name} -> {facade.provider} "
                          f"{facade.base_url} ({facade.upstream_model}, {facade.kind})")
