"""The docs pages: served to anyone, and every curl and Python SDK example on them, with the test server's URL
pinned, runs against a live gateway and succeeds."""

import html
import os
import re
import subprocess
import sys

import pytest
from django.contrib.auth.models import User

from codevector.docs import PAGES
from gateway.models import ApiKey, ModelFacade

def page_urls():
    return ["/docs/"] + [f"/docs/{slug}/" for slug in PAGES if slug]


@pytest.mark.parametrize("url", page_urls())
def test_every_docs_page_is_served_with_the_gateway_url_box(client, url, db):
    page = client.get(url).content.decode()
    assert 'id="gateway-url"' in page and "docs/gateway_url.js" in page
    assert "http://testserver/" in page  # examples rendered for the serving host


@pytest.fixture
def reader_key(gateway_server, mock_upstream, transactional_db):
    """A superuser's API key, with the facades the examples name, on a live gateway."""
    staff = User.objects.create_superuser("docs-reader", "d@example.com", "pw")
    _, key = ApiKey.objects.create_key(staff)
    for name, provider, kind in (("gpt-4o-mini", "openai", "chat"), ("claude-sonnet-4-5", "anthropic", "chat"),
                                 ("text-embedding-3-small", "openai", "embeddings")):
        ModelFacade.objects.create(name=name, provider=provider, kind=kind,
                                   base_url=mock_upstream.url + ("/v1" if provider == "openai" else ""),
                                   input_price_micros=150_000, output_price_micros=600_000)
    gateway_server.refresh()
    return key


def examples(lang: str, gateway_url: str) -> list[str]:
    """Every example of one language on the docs pages, with the gateway URL pinned."""
    from django.test import Client

    found = []
    for url in page_urls():
        page = Client().get(url).content.decode()
        pattern = re.compile(rf'<pre class="example" data-lang="{lang}" data-template="([^"]*)">')
        found += [html.unescape(t).replace("{GATEWAY}", gateway_url) for t in pattern.findall(page)]
    return found


def test_every_curl_example_runs_against_a_live_server(gateway_server, reader_key):
    commands = examples("curl", gateway_server.url)
    assert len(commands) >= 15
    env = {**os.environ, "CODEVECTOR_KEY": reader_key}
    for command in commands:
        result = subprocess.run(["bash", "-c", command + " --fail-with-body -w '\\n%{http_code}'"],
                                capture_output=True, text=True, env=env, timeout=30, cwd="/tmp")
        status = result.stdout.strip().splitlines()[-1]
        assert result.returncode == 0 and status in ("200", "201"), (command, result.stdout[-800:], result.stderr)


def test_every_python_sdk_example_runs_against_a_live_server(gateway_server, reader_key):
    programs = examples("python", gateway_server.url)
    assert len(programs) >= 3
    env = {**os.environ, "CODEVECTOR_KEY": reader_key}
    for program in programs:
        result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=env,
                                timeout=60, cwd="/tmp")
        assert result.returncode == 0, (program, result.stdout[-800:], result.stderr[-2000:])
