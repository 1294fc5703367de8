from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from gateway.models import ModelFacade


def show(value: int | None) -> str:
    return "absent" if value is None else f"{value:,}"


class Command(BaseCommand):
    help = ("List the facades whose prices differ from their price catalog model's current prices (catalog_ref), "
            "field by field, stored → catalog (micro-USD per million tokens; per 1,000 calls for searches). "
            "--check exits 1 if any does; --apply updates them (later requests only) and records the catalog "
            "version. Facades without a catalog model are skipped.")

    def add_arguments(self, parser):
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--check", action="store_true", help="Exit 1 if any facade differs from the catalog.")
        mode.add_argument("--apply", action="store_true", help="Set the differing facades' prices to the catalog's.")

    def handle(self, check, apply, **options):
        # Imported here: the catalog's data is loaded by this command only, never by the gateway.
        from gateway.price_catalog import CatalogError, catalog_prices, catalog_version, differences

        facades = list(ModelFacade.objects.order_by("name"))
        skipped = [f.name for f in facades if not f.catalog_ref]
        differing, broken, restamp = [], [], []
        for facade in (f for f in facades if f.catalog_ref):
            try:
                changes = differences(facade)
                stale = facade.catalog_version != catalog_prices(facade.catalog_ref).version
            except CatalogError as exc:
                broken.append(facade)
                self.stderr.write(f"{facade.name} ({facade.catalog_ref}) cannot be checked: {exc}")
                continue
            if not changes and stale:
                restamp.append(facade)  # the same prices in a newer catalog: --apply records its version
            if changes:
                differing.append(facade)
                state = "" if facade.is_active else ", inactive"
                self.stdout.write(f"{facade.name} ({facade.catalog_ref}, prices from "
                                  f"{facade.catalog_version or 'an unknown version'}{state}):")
                for change in sorted(changes, key=lambda c: c.field):
                    self.stdout.write(f"  {change.field}: {show(change.stored)} → {show(change.catalog)}")
        if skipped:
            self.stdout.write(f"Skipped {len(skipped)} facade(s) without a catalog model: {', '.join(skipped)}")
        checked = len(facades) - len(skipped) - len(broken)
        version = catalog_version()
        if apply:
            updated = [apply_catalog_locked(facade.pk) for facade in differing]
            for facade in restamp:
                apply_catalog_locked(facade.pk)
            self.stdout.write(f"Updated {len(updated)} of {checked} facade(s) to the catalog's prices ({version}); "
                              "later requests are billed at them.")
        else:
            self.stdout.write(f"{len(differing)} of {checked} facade(s) differ from the catalog ({version})"
                              + (": run `manage.py prices --apply` to update them." if differing else "."))
        if check and (differing or broken):
            raise CommandError(f"{len(differing)} facade(s) differ from the catalog, {len(broken)} cannot be checked.",
                               returncode=1)
        if apply and broken:
            raise CommandError(f"{len(broken)} facade(s) cannot be checked against the catalog (above).", returncode=1)


@transaction.atomic
def apply_catalog_locked(pk: int) -> ModelFacade:
    """Re-read the facade under a row lock and apply the catalog, saving only the price fields, so an admin's
    concurrent edit of another field (a routing change, a rename) is not overwritten."""
    from gateway.price_catalog import PRICE_COLUMNS, apply_catalog

    facade = ModelFacade.objects.select_for_update().get(pk=pk)
    apply_catalog(facade)
    facade.save(update_fields=[*PRICE_COLUMNS.values(), "price_rules", "catalog_ref", "catalog_version",
                               "updated_at"])
    return facade
