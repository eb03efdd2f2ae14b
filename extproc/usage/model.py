"""The usage vocabulary every API parser speaks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage of one LLM call, normalised across APIs.

    `input_tokens` counts every input token, cached reads and cache writes included
    (as OpenAI's `prompt_tokens` does); the cached counts are subsets of it.
    `output_tokens` counts every output token, reasoning included.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """What token budgets add: all input plus all output."""
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class LlmRequest:
    """What admission learns from a request body."""

    model: str | None = None
    max_tokens: int | None = None
    stream: bool = False
    # The client asked for streamed usage itself (stream_options.include_usage).
    client_wants_usage: bool = False
    # An estimate of the prompt's tokens from its size, for holds.
    estimated_input_tokens: int = 0


@dataclass(frozen=True, slots=True)
class RequestParse:
    """What a request parser learned from a body, and how (if at all) it rewrote it.

    `rewritten_body` is set only when the body must change on its way upstream (then the
    caller also fixes `content-length`). `problem` names why the body could not be read in
    full; the request still gets admitted on what was learned.
    """

    request: LlmRequest = field(default_factory=LlmRequest)
    rewritten_body: bytes | None = None
    # We asked the upstream for streamed usage the client did not ask for: hide it again.
    injected_usage: bool = False
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class ResponseParse:
    """The usage and model a buffered response reported; `usage` is None when it reported none."""

    usage: Usage | None = None
    model: str | None = None
    problem: str | None = None


class UsageStream(Protocol):
    """What every API's streamed-response reader offers, so the server needs no per-API code.

    `feed` returns the bytes to pass on for one body chunk, `finish` what remains at end of
    stream; `usage` and `model` are the best known so far, `problems` a closed vocabulary.
    """

    usage: Usage | None
    model: str | None
    problems: list[str]

    def feed(self, chunk: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


class StreamReader:
    """The part every streamed-response reader shares: the usage and model known so far,
    and the problems met, each once (the vocabulary is closed, so the list stays bounded
    on any stream). Subclasses implement `feed` and `finish`."""

    def __init__(self, model: str | None = None) -> None:
        self.usage: Usage | None = None
        self.model: str | None = model
        self.problems: list[str] = []

    def problem(self, problem: str) -> None:
        if problem not in self.problems:
            self.problems.append(problem)

    def problems_from(self, problems: list[str]) -> None:
        for problem in problems:
            self.problem(problem)


def read_as_stream(stream: UsageStream, body: bytes) -> ResponseParse:
    """A streamed response that reached us whole (buffered by the proxy), read as the stream
    it is: a streamed call must never go unpriced for arriving in one piece."""
    stream.feed(body)
    stream.finish()
    return ResponseParse(
        usage=stream.usage, model=stream.model, problem=stream.problems[0] if stream.problems else None
    )
