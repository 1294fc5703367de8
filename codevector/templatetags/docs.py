"""Template tags for the docs pages: examples and route links that follow the reader's gateway URL.

The page renders them for the serving host; codevector/static/docs/gateway_url.js rewrites them
to the URL the reader pinned, from the `{GATEWAY}` templates kept in data attributes.
"""

from django import template
from django.utils.html import format_html

register = template.Library()
PLACEHOLDER = "{GATEWAY}"


class ExampleNode(template.Node):
    def __init__(self, nodelist, language):
        self.nodelist, self.language = nodelist, language

    def render(self, context):
        raw = self.nodelist.render(context).strip("\n")
        return format_html('<pre class="example" data-lang="{}" data-template="{}"><code>{}</code></pre>',
                           self.language, raw, raw.replace(PLACEHOLDER, context["gateway"]))


@register.tag
def example(parser, token):
    """{% example "curl" %} curl {GATEWAY}/v1/models ... {% endexample %}"""
    bits = token.split_contents()
    language = bits[1].strip("\"'") if len(bits) > 1 else "sh"
    nodelist = parser.parse(("endexample",))
    parser.delete_first_token()
    return ExampleNode(nodelist, language)


@register.simple_tag(takes_context=True)
def route(context, path, label=""):
    """A link to a route on the reader's gateway, showing the full URL unless given a label."""
    url = context["gateway"] + path
    if label:
        return format_html('<a data-route="{}" href="{}">{}</a>', path, url, label)
    return format_html('<a data-route="{}" data-show-url href="{}">{}</a>', path, url, url)
