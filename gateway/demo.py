"""The demo facades `make run` creates, pointing at the mock upstream. Prices are the public list
prices per million tokens at the time of writing, in micro-USD."""

from gateway.models import ModelFacade

DEMO_FACADES = [
    # name, provider, input, cached input, cache write, output (micro-USD per million tokens)
    ("gpt-4o-mini", "openai", 150_000, 75_000, 0, 600_000),
    ("gpt-4o", "openai", 2_500_000, 1_250_000, 0, 10_000_000),
    ("text-embedding-3-small", "openai", 20_000, 0, 0, 0),
    ("claude-sonnet-4-5", "anthropic", 3_000_000, 300_000, 3_750_000, 15_000_000),
    ("claude-haiku-4-5", "anthropic", 1_000_000, 100_000, 1_250_000, 5_000_000),
]


def ensure_demo_facades(mock_url: str) -> list[ModelFacade]:
    """Create the demo facades that are missing; existing ones (and an admin's edits) are kept."""
    mock_url = mock_url.rstrip("/")
    facades = []
    for name, provider, inp, cached, write, out in DEMO_FACADES:
        facade, _ = ModelFacade.objects.get_or_create(
            name=name,
            defaults=dict(
                provider=provider,
                base_url=f"{mock_url}/v1" if provider == "openai" else mock_url,
                upstream_model=name,
                input_price_micros=inp,
                cached_input_price_micros=cached,
                cache_write_price_micros=write,
                output_price_micros=out,
            ),
        )
        facades.append(facade)
    return facades
