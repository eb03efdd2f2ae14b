"""Which LLM API a request speaks, from its path and host: the registry of API modules.

Each module (`openai`, `anthropic`, `gemini`, `bedrock`) declares its operations, the
paths it serves and its default provider; `APIS` lists them in the order a path is tried,
and `API_NAMES` (the values a policy's `api` takes) follows from them. Paths are matched
by their ending, so a route prefix in front (`/budget-demo/v1/...`, seen before Envoy's
prefix rewrite) does not matter. A configured `api`/`provider` on the route's policy
overrides what the path says.
"""

from __future__ import annotations

from collections.abc import Mapping

from extproc.usage import anthropic, bedrock, gemini, openai
from extproc.usage.api import Api, ApiCall

# In the order paths are tried: OpenAI's Azure deployment paths before its bare suffixes
# inside its own module; no two modules' paths overlap.
APIS: tuple[Api, ...] = (openai.API, anthropic.API, gemini.API, bedrock.API)
API_NAMES: tuple[str, ...] = tuple(op for api in APIS for op in api.operations)
_BY_NAME: dict[str, Api] = {api.name: api for api in APIS}
_AZURE_HOSTS = (".openai.azure.com", ".cognitiveservices.azure.com")


def identify(path: str, host: str = "", headers: Mapping[str, str] | None = None) -> ApiCall | None:
    """The API call a request path names, or None for a path no parser reads.

    The host and headers only tell Azure OpenAI from OpenAI on the paths both serve: an
    `*.openai.azure.com` host, or Azure's `api-key` header (OpenAI's is `authorization`).
    """
    bare, _, query = path.partition("?")
    bare = bare.rstrip("/")
    azure_host = host.split(":")[0].endswith(_AZURE_HOSTS) or (headers is not None and "api-key" in headers)
    for api in APIS:
        call = api.identify(bare, query, azure_host)
        if call is not None:
            return call
    return None


def override(call: ApiCall | None, *, api: str | None, provider: str | None) -> ApiCall | None:
    """Apply a route's configured api/provider on top of what the path said."""
    if api is None and provider is None:
        return call
    base = call or ApiCall(api=api or openai.CHAT, provider=provider or "openai")
    new_api = api or base.api
    new_provider = provider or (base.provider if api is None else module(new_api).default_provider)
    return ApiCall(
        api=new_api,
        provider=new_provider,
        model=base.model,
        streaming=base.streaming,
        api_version=base.api_version,
    )


def module(operation: str) -> Api:
    """The module that reads an operation ("openai.chat" -> openai's)."""
    return _BY_NAME[operation.split(".", 1)[0]]


def reader(call: ApiCall) -> Api:
    return module(call.api)
