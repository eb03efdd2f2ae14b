"""Token usage from LLM API traffic: one parser module per API, one vocabulary for all.

`openai` reads OpenAI chat completions (requests, buffered responses, SSE streams); `sse`
reassembles server-sent events from arbitrarily cut body chunks.
"""

from extproc.usage import openai
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
    "openai",
]
