"""Token usage from LLM API traffic: one parser module per API, one vocabulary for all.

`apis` tells which API a request path speaks and hands out its parser: `openai` (chat,
completions, embeddings, Responses; Azure too), `anthropic`, `gemini`, `bedrock`. Beneath
them: `sse` and `eventstream` reassemble streamed events however the body is cut, and
`encoding` decodes compressed responses.
"""

from extproc.usage import anthropic, apis, bedrock, gemini, openai
from extproc.usage.model import LlmRequest, RequestParse, ResponseParse, Usage, UsageStream
from extproc.usage.sse import SseEvent, SseSplitter

__all__ = [
    "LlmRequest",
    "RequestParse",
    "ResponseParse",
    "SseEvent",
    "SseSplitter",
    "Usage",
    "UsageStream",
    "anthropic",
    "apis",
    "bedrock",
    "gemini",
    "openai",
]
