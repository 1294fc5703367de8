"""The provider wire-format fixtures in tests/support/wire/ (each parsed by the official SDKs)."""

from pathlib import Path

from gateway.providers import SSEReader

FIXTURES = Path(__file__).resolve().parent / "wire"


def raw(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def events(name: str, chunk_size: int = 7):
    """The fixture's events, fed to the reader in small chunks as a network would deliver them."""
    data, reader, out = raw(name), SSEReader(), []
    for start in range(0, len(data), chunk_size):
        out += reader.feed(data[start : start + chunk_size])
    rest = reader.rest()
    if rest.strip():  # a last event without its blank line
        out += reader.feed(rest + b"\n\n")
    return out
