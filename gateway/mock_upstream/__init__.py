"""A fake OpenAI- and Anthropic-shaped model server for the demo, the tests and the benchmarks.

Responses follow the public API references (and tests/support/wire/): OpenAI chunks carry
`"usage": null` until a final usage chunk, sent only when `stream_options.include_usage` is
asked for, then `data: [DONE]`; Anthropic streams carry `ping`, input and cache counts in
`message_start` and cumulative counts in `message_delta`.

Routes: OpenAI `POST /v1/chat/completions`, `/v1/embeddings`, `/v1/responses` (whole or
streamed), `/v1/responses/input_tokens` and `/v1/responses/compact`; Anthropic `POST /v1/messages`
and `/v1/messages/count_tokens`.

The Responses API (`/v1/responses`) answers a Response object (`"object": "response"`, the model
as a dated snapshot name like the chat mock's) with one message item; a stream sends
`event: <type>` / `data: <json>` events numbered by `sequence_number` from 0:
`response.created`, `response.in_progress`, `response.output_item.added`,
`response.content_part.added`, `response.output_text.delta`..., `response.output_text.done`,
`response.content_part.done`, `response.output_item.done`, `response.completed` (which carries
the usage), and no `[DONE]`. Its output tokens include 16 reasoning tokens
(`output_tokens_details.reasoning_tokens`) on top of the reply's, so a consumer that ignores the
details still counts them. `/v1/responses/compact` answers a `response.compaction` object (the
input's user messages, then one compaction item) with the prompt's usage and 24 output tokens, 16
of them reasoning. `/v1/responses/input_tokens` and `/v1/messages/count_tokens` answer the input
tokens the same prompt would report.

Usage is deterministic, from the prompt's length:
  prompt tokens = 10 + ceil(len(prompt text) / 4); half of them cached once there are 64 or more
  (Anthropic: a quarter cache reads, 8 cache writes, the rest plain input); output tokens =
  ceil(len(reply) / 4), the reply being "Mock reply from <model>: <first 40 characters of the prompt>".

The upstream model name picks a failure, so a facade can be pointed at one:
  fail-500        an error status (500) with the provider's error body
  fail-429        a 429 with the provider's error body
  fail-timeout    no answer for 60 seconds
  fail-drop       the connection dropped (mid-stream for streams)
  no-usage        no usage anywhere in the response
  stream-error    a stream that ends in an error event (Responses API: a `response.failed` event
                  carrying the response, status "failed", an `error` object and the usage so far)
  incomplete      Responses API only: the reply cut at half its words, status "incomplete" with
                  `incomplete_details: {"reason": "max_output_tokens"}` and usage; a stream ends in
                  `response.incomplete`

Chat completions answers (whole or streamed) carry `set-cookie: mock_session=abc; Path=/`, which
the gateway must not pass on.

GET /_mock/requests lists the requests seen (path, headers, body); DELETE clears the list.
"""

from gateway.mock_upstream.counts import counts, words  # noqa: F401
from gateway.mock_upstream.responses import REASONING_TOKENS  # noqa: F401
from gateway.mock_upstream.server import MockUpstream, run  # noqa: F401

# The upstream model names that pick a failure (above), and `huge-usage`, whose prompt tokens
# (server.HUGE_TOKENS) no 64-bit counter holds.
FAILURES = ("fail-500", "fail-429", "fail-timeout", "fail-drop", "no-usage", "stream-error", "incomplete",
            "huge-usage")
