"""Server-sent events, reassembled from body chunks that Envoy cuts anywhere.

Envoy delivers a streamed body in chunks split at arbitrary bytes (Envoy #45437): inside an
event, inside a line, inside a UTF-8 character, between the two bytes of a CRLF. The
splitter works on bytes and hands out complete events only, each with the exact bytes it
came from, so a reader can drop one event and pass every other byte on untouched.

Parsing follows the WHATWG `text/event-stream` rules: lines end in CRLF, LF or CR; a blank
line ends an event; `data:` lines join with LF; one space after the colon is not part of
the value; lines starting with a colon are comments. Two deliberate leniencies: an event
cut off by the end of the stream still counts (upstreams omit the final blank line), and
its last line counts even without a line ending.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Far above any real LLM chunk, yet a body that is not SSE at all (no blank line ever)
# cannot grow the sidecar's memory without bound.
DEFAULT_MAX_PENDING = 1 << 20

_LINE_END = re.compile(rb"[\r\n]")
_CR = 0x0D
_LF = 0x0A
_BOM = b"\xef\xbb\xbf"
# `_line_start` when the current line already has bytes that were handed out (oversized).
_LINE_HAS_CONTENT = -1


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One event: its exact bytes (terminating blank line included) and its fields."""

    raw: bytes
    # The `data:` lines joined with LF; empty when the event had none.
    data: bytes = b""
    # The `event:` field; None means the default type ("message").
    event: str | None = None
    # A piece of an event longer than the splitter's cap: handed out so that no byte is
    # lost or held, but never parsed.
    oversized: bool = False


class SseSplitter:
    """Turns arbitrarily cut body chunks into complete SSE events.

    Invariant: the `raw` bytes of everything `feed` and `flush` return, concatenated, equal
    the bytes fed. An event whose incomplete tail outgrows `max_pending` sets `overflowed`;
    its bytes are then handed out as `oversized` pieces as they arrive instead of being
    kept, and parsing resumes with the next event.
    """

    def __init__(self, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        self.max_pending = max_pending
        # Sticky: some event was too large to parse.
        self.overflowed = False
        # Bytes handed out as oversized pieces, for telemetry.
        self.unparsed_bytes = 0
        self._buf = bytearray()
        # Where scanning resumes: bytes before it hold no unhandled line ending.
        self._scan = 0
        self._line_start = 0
        # (start, end) of each complete non-blank line of the pending event, in `_buf`.
        self._lines: list[tuple[int, int]] = []
        self._in_oversized = False
        self._at_stream_start = True

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """Adds a chunk; returns the events it completed, in order."""
        if not chunk:
            return []
        self._buf += chunk
        return self._split(final=False)

    def flush(self) -> list[SseEvent]:
        """Ends the stream: returns the events still pending, a cut-off last one included."""
        events = self._split(final=True)
        if self._buf:
            end = len(self._buf)
            if not self._in_oversized and self._line_start < end:
                self._lines.append((self._line_start, end))
            events.append(self._event(0, end))
        self._buf.clear()
        self._scan = 0
        self._line_start = 0
        self._lines = []
        self._in_oversized = False
        return events

    def _split(self, final: bool) -> list[SseEvent]:
        buf = self._buf
        size = len(buf)
        events: list[SseEvent] = []
        handed_out = 0
        pos = self._scan
        while True:
            found = _LINE_END.search(buf, pos)
            if found is None:
                pos = size
                break
            eol = found.start()
            if buf[eol] == _CR:
                if eol + 1 == size and not final:
                    # A CR ending the buffer may be the first half of a CRLF: wait for it,
                    # so the event's raw bytes include the LF and the next event starts clean.
                    pos = eol
                    break
                end = eol + 2 if eol + 1 < size and buf[eol + 1] == _LF else eol + 1
            else:
                end = eol + 1
            if eol == self._line_start:
                events.append(self._event(handed_out, end))
                handed_out = end
                self._lines = []
                self._in_oversized = False
            elif not self._in_oversized:
                self._lines.append((self._line_start, eol))
            self._line_start = end
            pos = end

        if not self._in_oversized and size - handed_out > self.max_pending:
            self.overflowed = True
            self._in_oversized = True
            self._lines = []
        if self._in_oversized and pos > handed_out:
            events.append(self._event(handed_out, pos))
            if self._line_start < pos:
                self._line_start = _LINE_HAS_CONTENT
            handed_out = pos

        # One compaction per chunk, not per event: many small events stay linear.
        if handed_out:
            del buf[:handed_out]
            if self._line_start != _LINE_HAS_CONTENT:
                self._line_start -= handed_out
            self._lines = [(start - handed_out, end - handed_out) for start, end in self._lines]
        self._scan = pos - handed_out
        return events

    def _event(self, start: int, end: int) -> SseEvent:
        raw = bytes(self._buf[start:end])
        at_stream_start, self._at_stream_start = self._at_stream_start, False
        if self._in_oversized:
            self.unparsed_bytes += len(raw)
            return SseEvent(raw=raw, oversized=True)
        data: list[bytes] = []
        event_type: str | None = None
        for index, (line_start, line_end) in enumerate(self._lines):
            line = bytes(self._buf[line_start:line_end])
            if index == 0 and at_stream_start and line.startswith(_BOM):
                line = line[len(_BOM) :]
            name, colon, value = line.partition(b":")
            if not name and colon:
                continue  # a comment (keep-alive)
            if value.startswith(b" "):
                value = value[1:]
            if name == b"data":
                data.append(value)
            elif name == b"event":
                event_type = value.decode("utf-8", "replace") or None
        return SseEvent(raw=raw, data=b"\n".join(data), event=event_type)
