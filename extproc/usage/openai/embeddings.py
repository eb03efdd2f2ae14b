"""Embeddings (`/v1/embeddings`): input only, usage `prompt_tokens`, never streamed."""

from __future__ import annotations

from extproc.usage._body import first as _first
from extproc.usage._body import load_object as _load_object
from extproc.usage._body import optional_str as _optional_str
from extproc.usage.model import LlmRequest, RequestParse
from extproc.usage.openai._common import prompt_estimate


def parse_request(body: bytes, default_model: str | None) -> RequestParse:
    """An embeddings request: input only, no output to hold for, never streamed."""
    obj, problem = _load_object(body)
    if obj is None:
        return RequestParse(request=LlmRequest(model=default_model), problem=problem)
    problems: list[str] = []
    model = _optional_str(obj, "model", problems) or default_model
    estimate, _ = prompt_estimate(obj.get("input"), "input", problems)
    request = LlmRequest(model=model, max_tokens=0, estimated_input_tokens=estimate)
    return RequestParse(request=request, problem=_first(problems))
