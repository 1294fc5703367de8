"""The gateway's in-process snapshot of active model facades, refreshed in the background."""

from dataclasses import dataclass

from django.db import close_old_connections

from gateway.http_client import Transport
from gateway.models import ModelFacade, credential_variable_allowed
from usage.pricing import Prices


@dataclass(frozen=True)
class FacadeInfo:
    facade_id: int
    name: str
    provider: str
    base_url: str
    upstream_model: str
    api_key_env: str
    prices: Prices
    created: int  # unix time, for the models list
    kind: str = "chat"  # ModelFacade.Kind: which endpoints answer it
    # Sent upstream with the credential (the facade's organization and project, if any).
    routing_headers: tuple[tuple[str, str], ...] = ()
    # Its own proxy and TLS files, or None (the usual case) when it takes the gateway's: the client's
    # pool key beside the origin, so its connections are never another facade's.
    transport: Transport | None = None


def routing_headers(facade: ModelFacade) -> tuple[tuple[str, str], ...]:
    return tuple((name, value) for name, value in (("openai-organization", facade.openai_organization),
                                                   ("openai-project", facade.openai_project)) if value)


def transport(facade: ModelFacade) -> Transport | None:
    fields = (facade.upstream_proxy, facade.upstream_ca_bundle, facade.upstream_client_cert, facade.upstream_client_key)
    return Transport(*fields) if any(fields) else None


def load_facades() -> dict[str, FacadeInfo]:
    close_old_connections()
    return {
        f.name: FacadeInfo(f.pk, f.name, f.provider, f.base_url.rstrip("/"), f.upstream_model, f.api_key_env,
                           f.prices, int(f.created_at.timestamp()), f.kind, routing_headers(f), transport(f))
        for f in ModelFacade.objects.filter(is_active=True)
    }
