"""The /v1/ ASGI application (placeholder until the gateway lands)."""

GATEWAY_PREFIXES = ("/v1/",)
PROBES = ("/healthz", "/readyz")


def is_gateway_path(path: str) -> bool:
    return path.startswith(GATEWAY_PREFIXES) or path in PROBES


class GatewayApp:
    async def lifespan(self, scope, receive, send):
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def __call__(self, scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"status": "ok"}'})
