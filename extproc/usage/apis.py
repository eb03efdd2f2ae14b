"""Which LLM API a request speaks, from its path and host: the registry of API modules.

Paths are matched by their ending, so a route prefix in front (`/budget-demo/v1/...`,
seen before Envoy's prefix rewrite) does not matter. A configured `api`/`provider` on the
route's policy overrides what the path says.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import parse_qs, unquote

from extproc.usage import anthropic, bedrock, gemini, openai
from extproc.usage.api import Api, ApiCall

_AZURE_DEPLOYMENT = re.compile(
    r"/openai/deployments/(?P<dep>[^/]+)/(?P<op>chat/completions|completions|embeddings)$"
)
_AZURE_RESPONSES = re.compile(r"/openai/(?:v1/)?responses$")
_GEMINI = re.compile(r"/models/(?P<model>[^/:]+):(?P<op>generateContent|streamGenerateContent)$")
_BEDROCK = re.compile(r"/model/(?P<model>[^/]+)/(?P<op>converse|converse-stream)$")
_OPENAI_OPS = (
    ("/chat/completions", "openai.chat"),
    ("/completions", "openai.completions"),
    ("/embeddings", "openai.embeddings"),
    ("/responses", "openai.responses"),
)

APIS: dict[str, Api] = {
    "openai": openai.API,
    "anthropic": anthropic.API,
    "gemini": gemini.API,
    "bedrock": bedrock.API,
}

_DEFAULT_PROVIDER = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gemini": "google",
    "bedrock": "aws",
}


def identify(path: str, host: str = "", headers: Mapping[str, str] | None = None) -> ApiCall | None:
    """The API call a request path names, or None for a path no parser reads.

    The host and headers only tell Azure OpenAI from OpenAI on the paths both serve: an
    `*.openai.azure.com` host, or Azure's `api-key` header (OpenAI's is `authorization`).
    """
    bare, _, query = path.partition("?")
    bare = bare.rstrip("/")
    azure_host = host.split(":")[0].endswith((".openai.azure.com", ".cognitiveservices.azure.com")) or (
        headers is not None and "api-key" in headers
    )
    if m := _AZURE_DEPLOYMENT.search(bare):
        op = {"chat/completions": "openai.chat", "completions": "openai.completions"}.get(
            m["op"], "openai.embeddings"
        )
        return ApiCall(api=op, provider="azure", model=unquote(m["dep"]), api_version=_api_version(query))
    if _AZURE_RESPONSES.search(bare):
        return ApiCall(api="openai.responses", provider="azure", api_version=_api_version(query))
    if m := _GEMINI.search(bare):
        return ApiCall(
            api="gemini.generate",
            provider="google",
            model=unquote(m["model"]),
            streaming=m["op"] == "streamGenerateContent",
        )
    if m := _BEDROCK.search(bare):
        return ApiCall(
            api="bedrock.converse",
            provider="aws",
            model=unquote(m["model"]),
            streaming=m["op"] == "converse-stream",
        )
    if bare.endswith("/v1/messages") or bare == "/messages":
        return ApiCall(api="anthropic.messages", provider="anthropic")
    for suffix, api in _OPENAI_OPS:
        if bare.endswith(suffix):
            return ApiCall(api=api, provider="azure" if azure_host else "openai")
    return None


def _api_version(query: str) -> str | None:
    values = parse_qs(query).get("api-version")
    return values[0] if values else None


def override(call: ApiCall | None, *, api: str | None, provider: str | None) -> ApiCall | None:
    """Apply a route's configured api/provider on top of what the path said."""
    if api is None and provider is None:
        return call
    base = call or ApiCall(api=api or "openai.chat", provider=provider or "openai")
    new_api = api or base.api
    new_provider = provider or (base.provider if api is None else _DEFAULT_PROVIDER[new_api.split(".")[0]])
    return ApiCall(
        api=new_api,
        provider=new_provider,
        model=base.model,
        streaming=base.streaming,
        api_version=base.api_version,
    )


def reader(call: ApiCall) -> Api:
    return APIS[call.api.split(".", 1)[0]]
