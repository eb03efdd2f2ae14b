"""Which API a request path speaks, and a route's configured overrides (pure)."""

from __future__ import annotations

import pytest

from extproc.usage.api import ApiCall
from extproc.usage.apis import API_NAMES, identify, override, reader


@pytest.mark.parametrize(
    ("path", "host", "expected"),
    [
        ("/v1/chat/completions", "", ApiCall("openai.chat", "openai")),
        ("/budget-demo/v1/chat/completions", "", ApiCall("openai.chat", "openai")),
        ("/v1/completions", "", ApiCall("openai.completions", "openai")),
        ("/v1/embeddings", "", ApiCall("openai.embeddings", "openai")),
        ("/v1/responses", "", ApiCall("openai.responses", "openai")),
        ("/v1/chat/completions", "res.openai.azure.com", ApiCall("openai.chat", "azure")),
        (
            "/openai/deployments/my-gpt4o/chat/completions?api-version=2024-10-21",
            "",
            ApiCall("openai.chat", "azure", model="my-gpt4o", api_version="2024-10-21"),
        ),
        (
            "/openai/deployments/emb/embeddings?api-version=1",
            "",
            ApiCall("openai.embeddings", "azure", "emb", api_version="1"),
        ),
        (
            "/openai/deployments/old/completions?x=1&api-version=2024-06-01",
            "",
            ApiCall("openai.completions", "azure", "old", api_version="2024-06-01"),
        ),
        (
            "/openai/v1/responses?api-version=preview",
            "",
            ApiCall("openai.responses", "azure", api_version="preview"),
        ),
        ("/v1/messages", "", ApiCall("anthropic.messages", "anthropic")),
        (
            "/v1beta/models/gemini-2.5-flash:generateContent",
            "",
            ApiCall("gemini.generate", "google", model="gemini-2.5-flash"),
        ),
        (
            "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
            "",
            ApiCall("gemini.generate", "google", model="gemini-2.5-pro", streaming=True),
        ),
        (
            "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-pro:generateContent",
            "",
            ApiCall("gemini.generate", "google", model="gemini-2.5-pro"),
        ),
        (
            "/model/us.anthropic.claude-sonnet-4-20250514-v1%3A0/converse-stream",
            "",
            ApiCall(
                "bedrock.converse", "aws", model="us.anthropic.claude-sonnet-4-20250514-v1:0", streaming=True
            ),
        ),
        (
            "/model/amazon.nova-pro-v1:0/converse",
            "",
            ApiCall("bedrock.converse", "aws", model="amazon.nova-pro-v1:0"),
        ),
    ],
)
def test_paths_name_their_api_provider_and_model(path: str, host: str, expected: ApiCall) -> None:
    assert identify(path, host) == expected


@pytest.mark.parametrize("path", ["/v1/models", "/healthz", "/v1/messages/count_tokens", "/v1/files", "/"])
def test_paths_no_parser_reads_are_none(path: str) -> None:
    assert identify(path) is None


def test_a_routes_policy_overrides_provider_and_api() -> None:
    call = identify("/v1/chat/completions")
    assert override(call, api=None, provider="azure") == ApiCall("openai.chat", "azure")
    assert override(call, api="anthropic.messages", provider=None) == ApiCall(
        "anthropic.messages", "anthropic"
    )
    assert override(None, api=None, provider=None) is None
    assert override(None, api="openai.chat", provider="openai") == ApiCall("openai.chat", "openai")
    assert override(call, api=None, provider=None) is call


def test_every_named_api_has_a_reader() -> None:
    for name in API_NAMES:
        assert reader(ApiCall(name, "x")).name == name.split(".")[0]


def test_azure_before_2024_09_01_gets_no_stream_options_and_later_versions_do() -> None:
    from extproc.usage.openai import API

    body = b'{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"stream":true}'
    old = identify("/openai/deployments/d/chat/completions?api-version=2024-06-01")
    new = identify("/openai/deployments/d/chat/completions?api-version=2024-10-21")
    preview = identify("/openai/deployments/d/chat/completions?api-version=2025-04-01-preview")
    assert old is not None and new is not None and preview is not None
    refused = API.parse_request(body, old)
    assert refused.rewritten_body is None and not refused.injected_usage
    assert refused.problem == "api-version takes no stream_options"
    assert API.parse_request(body, new).injected_usage
    assert API.parse_request(body, preview).injected_usage
    assert API.parse_request(body, identify("/v1/chat/completions") or new).injected_usage


def test_azures_api_key_header_tells_azure_from_openai_on_shared_paths() -> None:
    assert identify("/v1/chat/completions", "gw.internal", {"api-key": "k"}) == ApiCall(
        "openai.chat", "azure"
    )
    assert identify("/v1/chat/completions", "gw.internal", {"authorization": "Bearer k"}) == ApiCall(
        "openai.chat", "openai"
    )
