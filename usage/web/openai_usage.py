"""OpenAI-compatible organization usage and costs (GET /v1/organization/usage/completions,
/usage/embeddings, /usage/web_search_calls, /usage/file_search_calls and /costs), read from the
ledger by Django.

The shapes, parameters and errors are those of OpenAI's Usage and Costs APIs, so the official SDKs
(`client.admin.organization.usage.completions(...)`, `.embeddings(...)`, `.web_search_calls(...)`,
`.file_search_calls(...)`, `.costs(...)`) and the dashboards built on them work against CodeVector
unchanged but for the base URL and the key:

- Authentication as OpenAI's admin keys: `Authorization: Bearer <CodeVector API key>` of a user who
  sees everyone's usage (usage.web.permissions.SeesEveryoneByKey); any other key is refused with 403,
  a missing or unknown key with 401, in OpenAI's error format (usage.web.openai_errors). Requests
  share the usage API's rate (the "usage" throttle scope, API_THROTTLE_RATE).
- `user_id` is the username, `api_key_id` the key's prefix, `model` the facade's public name,
  `project_id` the public id of the key's project (`proj_…`; the Default project is `proj_default`):
  a project's usage is its keys' usage, each key fixed to one project when it was created, so
  grouping or filtering by project is exact at every level. `project_ids` names existing projects
  (an unknown id is refused with 400, param `project_ids`, rather than answered with zeros; an
  inactive project's usage is still read). CodeVector has no batches, service tiers or API sources:
  those fields are null, and `batch=true` matches nothing.
- Completions count chat facades, embeddings count embeddings facades (ModelFacade.kind); costs
  count both.
- Web and file searches (`num_requests`: the server-side tool calls the upstream billed) are
  grouped by `user_id`, `api_key_id`, `model` (for file searches a CodeVector extension: OpenAI
  groups them by vector store) and `project_id`. CodeVector does not know a search's context level
  or vector store: those fields are null, grouping by them is refused and filtering on them matches
  nothing. It counts searches per model, not per request, so a web search result's
  `num_model_requests` is every request, in that bucket and group, to the models that made web
  searches in it: the requests among which the searches were made, not only those that searched.
- Buckets are whole local hours or days of the gateway's TIME_ZONE (DST-exact, as every other usage
  read): `start_time` is moved back to the start of the bucket holding it, and the last bucket is
  the one holding `end_time` (exclusive; default now). Each bucket's `start_time`/`end_time` say
  what it covers. The finest grain is the ledger's 5 minutes, so `bucket_width=1m` is refused.
- Every number is exact, read by usage.reads.openai through the engine every page reads with
  (usage.reads.engine), so the buckets of a range add up to usage.reads.queries.totals_between over
  the same span.

Costs are the ledger's own nanodollars, to the nanodollar. Line items (`group_by=line_item`:
"<model>, input_tokens", "<model>, cached_input_tokens", "<model>, cache_write_tokens", "<model>,
cache_write_extended_tokens", "<model>, output_tokens", "<model>, web_search_calls", "<model>,
file_search_calls") split that exact amount of one model (in one bucket and group) over its billed
quantities at the facade's current base prices (usage.reads.openai says how), so they always add up
to the ledger. `input_tokens` there are the prompt tokens billed at the input price (neither cached
reads nor cache writes), `cache_write_tokens` the writes of the default retention and
`cache_write_extended_tokens` those of the longer one (Anthropic 1 hour, OpenAI 12 hours); the
quantities of a model's token line items add up to its prompt plus output tokens. Token items have
`quantity_unit` "tokens", search items "calls".

Amounts are emitted as JSON numbers written from the Decimal (9 digits after the point), never
through a float.
"""

from django.urls import path
from drf_spectacular.utils import extend_schema
from rest_framework.authentication import SessionAuthentication
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from usage.reads.openai import (COMPLETIONS, COSTS, EMBEDDINGS, FILE_SEARCHES, WEB_SEARCHES, Endpoint, Query,
                                cost_results, usage_results)
from usage.web.openai_errors import ExactJSONRenderer, JSONOnly, openai_exception_handler
from usage.web.openai_params import parse
from usage.web.permissions import SeesEveryoneByKey


def page(query: Query, results: dict) -> dict:
    """The OpenAI page: one bucket per span, with its results (by bucket start)."""
    return {
        "object": "page",
        "data": [{"object": "bucket", "start_time": int(start.timestamp()), "end_time": int(end.timestamp()),
                  "results": results.get(start, [])} for start, end in query.buckets],
        "has_more": query.has_more,
        "next_page": query.next_page,
    }


@extend_schema(exclude=True)  # OpenAI documents these; the CodeVector schema describes its own API
class OrganizationView(APIView):
    endpoint: Endpoint
    permission_classes = [SeesEveryoneByKey]
    throttle_scope = "usage"  # the usage API's rate (API_THROTTLE_RATE) and its count: one budget for both
    renderer_classes = [ExactJSONRenderer]
    content_negotiation_class = JSONOnly

    def get_authenticators(self):
        """The API-key authentication of the rest of the API, without sessions: an admin key, as OpenAI's."""
        return [auth() for auth in api_settings.DEFAULT_AUTHENTICATION_CLASSES
                if not issubclass(auth, SessionAuthentication)]

    def get_exception_handler(self):
        return openai_exception_handler

    def get(self, request):
        query = parse(request, self.endpoint)
        return Response(page(query, cost_results(query) if self.endpoint is COSTS else usage_results(query)))


class CompletionsUsage(OrganizationView):
    endpoint = COMPLETIONS


class EmbeddingsUsage(OrganizationView):
    endpoint = EMBEDDINGS


class WebSearchCalls(OrganizationView):
    endpoint = WEB_SEARCHES


class FileSearchCalls(OrganizationView):
    endpoint = FILE_SEARCHES


class Costs(OrganizationView):
    endpoint = COSTS


urlpatterns = [
    path("usage/completions", CompletionsUsage.as_view(), name="openai-usage-completions"),
    path("usage/embeddings", EmbeddingsUsage.as_view(), name="openai-usage-embeddings"),
    path("usage/web_search_calls", WebSearchCalls.as_view(), name="openai-usage-web-search-calls"),
    path("usage/file_search_calls", FileSearchCalls.as_view(), name="openai-usage-file-search-calls"),
    path("costs", Costs.as_view(), name="openai-costs"),
]
