"""The docs pages: served to anyone, and every curl example on them, with the test server's URL
pinned, runs against a live gateway and succeeds."""

import html
import os
import re
import subprocess

import pytest
from django.contrib.auth.models import User

from codevector.docs import PAGES
from gateway.models import ApiKey, ModelFacade

EXAMPLE = re.compile(r'<pre class="example" data-lang="curl" data-template="([^"]*)">')


def page_urls():
    return ["/docs/"] + [f"/docs/{slug}/" for slug in PAGES if slug]


@pytest.mark.parametrize("url", page_urls())
def test_every_docs_page_is_served_with_the_gateway_url_box(client, url, db):
    page = client.get(url).content.decode()
    assert 'id="gateway-url"' in page and "docs/gateway_url.js" in page
    assert "http://testserver/" in page  # examples rendered for the serving host


def test_every_curl_example_runs_against_a_live_server(gateway_server, mock_upstream, transactional_db):
    staff = User.objects.create_superuser("docs-reader", "d@example.com", "pw")
    _, key = ApiKey.objects.create_key(staff)
    for name, provider in (("gpt-4o-mini", "openai"), ("claude-sonnet-4-5", "anthropic"),
                           ("text-embedding-3-small", "openai")):
        ModelFacade.objects.create(name=name, provider=provider,
                                   base_url=mock_upstream.url + ("/v1" if provider == "openai" else ""),
                                   input_price_micros=150_000, output_price_micros=600_000)
    gateway_server.refresh()
    from django.test import Client

    examples = []
    for url in page_urls():
        page = Client().get(url).content.decode()
        examples += [html.unescape(t).replace("{GATEWAY}", gateway_server.url) for t in EXAMPLE.findall(page)]
    assert len(examples) >= 15
    env = {**os.environ, "CODEVECTOR_KEY": key}
    for command in examples:
        result = subprocess.run(["bash", "-c", command + " --fail-with-body -w '\\n%{http_code}'"],
                                capture_output=True, text=True, env=env, timeout=30, cwd="/tmp")
        status = result.stdout.strip().splitlines()[-1]
        assert result.returncode == 0 and status in ("200", "201"), (command, result.stdout[-800:], result.stderr)
