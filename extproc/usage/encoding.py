"""Compressed response bodies (`content-encoding`): decoded for parsing, re-encoded if changed.

Usage parsers read plain bytes, but an upstream may compress its answer (`gzip`, `deflate`,
`br`, or several in turn: `gzip, br` was gzipped, then brotli'd). `decode_body` decodes a
buffered body; `DecodedStream` wraps any `UsageStream` for a streamed one, decoding each
chunk as it arrives.

Decoding is bounded: past `max_output` decoded bytes (a zip bomb expands a thousandfold)
the decoder stops and says so instead of growing memory. Nothing here raises on upstream
bytes; problems come back from a closed vocabulary. `br` needs the `brotli` package (1.2 or
later, for bounded output), imported on first use: without it only `br` is unsupported.
"""

from __future__ import annotations

import zlib
from types import ModuleType
from typing import Protocol

from extproc.usage.model import Usage, UsageStream

__all__ = [
    "DEFAULT_MAX_OUTPUT",
    "DecodedStream",
    "Decoder",
    "Encoder",
    "brotli_available",
    "decode_body",
    "decoder_for",
    "encoder_for",
]

# Far above any LLM response, decoded; a zip bomb stops here instead of exhausting memory.
DEFAULT_MAX_OUTPUT = 64 << 20

UNSUPPORTED = "unsupported content-encoding"
MALFORMED = "malformed compressed data"
TRUNCATED = "truncated compressed data"
OVER_CAP = "decompressed size over the cap"
REWRITE_AFTER_PASSTHROUGH = "stream rewritten after passing through"

# Raw deflate is what some servers send as `deflate`; browsers retry as raw when the zlib
# header is wrong, which is known within the first bytes. Input is kept for that retry only
# this long.
_DEFLATE_RETRY_BYTES = 64 << 10
# While no byte has decoded yet (a gzip header, split), the stream's mode is undecided and
# its compressed chunks are held back; at most this many, then they pass through.
_MAX_UNDECIDED_BYTES = 64 << 10
# Re-encoding runs per streamed chunk: fast settings over the last few percent of size.
_ZLIB_LEVEL = 6
_BROTLI_QUALITY = 4


class _Stage(Protocol):
    """One coding's incremental decoder.

    It never raises: bad input sets `malformed` (zlib then drops what that call decoded of
    the member it was in). It returns at most `limit + 1` bytes, so going over the limit
    shows without decoding far past it.
    """

    malformed: bool

    def decompress(self, data: bytes, limit: int) -> bytes: ...

    def finished(self) -> bool: ...


def _codings(content_encoding: str | None) -> list[str]:
    """The codings in the order they were applied, `identity` dropped, lower-cased."""
    if not content_encoding:
        return []
    codings = (part.strip().lower() for part in content_encoding.split(","))
    return [coding for coding in codings if coding and coding != "identity"]


class Decoder:
    """Incrementally decodes one body, bounded to `max_output` decoded bytes in total.

    The first problem (`problem`) stops decoding for good: later calls return nothing.
    What earlier chunks decoded stays valid.
    """

    def __init__(self, codings: list[str], max_output: int = DEFAULT_MAX_OUTPUT) -> None:
        self.problem: str | None = None
        self.max_output = max_output
        self._produced = 0
        self._fed = False
        # Undone in reverse: the last coding applied is the first removed.
        stages: list[_Stage] = []
        for coding in reversed(codings):
            stage = _decoding_stage(coding)
            if stage is None:
                self.problem = UNSUPPORTED
                stages = []
                break
            stages.append(stage)
        self._stages = stages

    def decompress(self, chunk: bytes) -> bytes:
        """Decodes one chunk; returns the bytes it completed (often none for a header)."""
        if self.problem is not None or not chunk:
            return b""
        self._fed = True
        data = chunk
        for stage in self._stages:
            data = stage.decompress(data, self.max_output - self._produced)
            if stage.malformed and self.problem is None:
                # What decoded before the damage is good: it still goes through later stages.
                self.problem = MALFORMED
            if len(data) > self.max_output - self._produced:
                self.problem = OVER_CAP
                data = data[: self.max_output - self._produced]
        self._produced += len(data)
        return data

    def flush(self) -> bytes:
        """Ends the body: returns nothing more, but a stream that did not end is a problem."""
        if self.problem is None and self._fed and not all(stage.finished() for stage in self._stages):
            self.problem = TRUNCATED
        return b""


def decoder_for(content_encoding: str | None, max_output: int = DEFAULT_MAX_OUTPUT) -> Decoder | None:
    """A decoder for a `content-encoding` value; None when the body is not encoded.

    An encoding we cannot decode (`zstd`, `compress`, `br` without brotli) still gets a
    Decoder, with `problem` already set, so the caller learns why nothing decodes.
    """
    codings = _codings(content_encoding)
    return Decoder(codings, max_output) if codings else None


def decode_body(
    body: bytes, content_encoding: str | None, max_output: int = DEFAULT_MAX_OUTPUT
) -> tuple[bytes, str | None]:
    """A buffered body decoded, and the problem if any: then what decoded before it, if
    anything (a damaged gzip member yields nothing; the members before it stand)."""
    decoder = decoder_for(content_encoding, max_output)
    if decoder is None:
        return body, None
    data = decoder.decompress(body)
    decoder.flush()
    return data, decoder.problem


class Encoder:
    """Re-encodes a changed stream with its original codings, chunk by chunk.

    Each chunk is flushed (zlib's Z_SYNC_FLUSH, brotli's flush) so that the client can
    decode it as soon as it arrives, as it could the upstream's.
    """

    def __init__(self, stages: list[_EncodingStage]) -> None:
        self._stages = stages

    def compress(self, data: bytes) -> bytes:
        """One chunk, encoded and flushed; nothing for an empty chunk."""
        if not data:
            return b""
        for stage in self._stages:
            data = stage.compress(data)
        return data

    def finish(self) -> bytes:
        """Ends every coding's stream (gzip's trailer, brotli's last block)."""
        data = b""
        for stage in self._stages:
            data = stage.finish(data)
        return data


def encoder_for(content_encoding: str | None) -> Encoder | None:
    """An encoder for a `content-encoding` value; None when not encoded or not supported."""
    codings = _codings(content_encoding)
    stages: list[_EncodingStage] = []
    for coding in codings:
        stage = _encoding_stage(coding)
        if stage is None:
            return None
        stages.append(stage)
    return Encoder(stages) if stages else None


class DecodedStream:
    """A `UsageStream` over a compressed streamed response: decodes, then feeds `inner`.

    The stream's mode is decided by the first chunk that decodes to any bytes:

    - `inner` returned that chunk's decoded bytes as the same object (it changes nothing,
      as every reader does when not hiding a usage chunk): each compressed chunk passes on
      as the same object, so the client gets the upstream's bytes exactly.
    - `inner` returned anything else (it may hide an event, so it holds bytes back): the
      stream is re-encoded, each chunk flushed, so the client's decoded bytes are what
      `inner` passed on. The mode cannot change later, as the client's decoder is then
      following one compressed stream or the other.

    Chunks that decode to nothing before that (a gzip header) are held until the mode is
    known. If decoding fails, a passed-through stream goes on passing through (the client
    meets the same damage); a re-encoded one ends cleanly where decoding stopped.
    """

    def __init__(
        self, inner: UsageStream, content_encoding: str | None, max_output: int = DEFAULT_MAX_OUTPUT
    ) -> None:
        self.inner = inner
        self.usage: Usage | None = inner.usage
        self.model: str | None = inner.model
        self.problems: list[str] = list(inner.problems)
        self._own_problems: list[str] = []
        self._decoder = decoder_for(content_encoding, max_output)
        self._encoder = encoder_for(content_encoding)
        self._held: list[bytes] = []
        self._held_bytes = 0
        # None until decided; then True (chunks pass as they are) or False (re-encoded).
        self._passthrough: bool | None = None
        if self._decoder is not None and self._decoder.problem is not None:
            self._passthrough = True  # nothing decodes, so nothing can change
            self._own_problem(self._decoder.problem)

    def feed(self, chunk: bytes) -> bytes:
        """Decodes and reads one compressed chunk; returns the bytes to pass on for it."""
        if self._decoder is None:
            out = self.inner.feed(chunk)
            self._sync()
            return out
        if self._decoder.problem is not None:
            self._sync()
            return self._after_failure(chunk)
        decoded = self._decoder.decompress(chunk)
        out = self.inner.feed(decoded)
        self._note_decoder()
        passed = self._pass_on(chunk, decoded, out)
        self._sync()
        return passed

    def finish(self) -> bytes:
        """Ends the stream: what `inner` still holds, and the end of a re-encoded stream."""
        if self._decoder is None:
            out = self.inner.finish()
            self._sync()
            return out
        if self._decoder.problem is None:
            self._decoder.flush()
            self._note_decoder()
        out = self.inner.finish()
        self._sync()
        if self._passthrough is None:
            if not out:
                # Nothing ever decoded and nothing to add: the upstream's bytes as they were.
                return self._release_held(b"")
            self._passthrough = False
            self._held = []
        if self._passthrough:
            if out:
                self._own_problem(REWRITE_AFTER_PASSTHROUGH)
                self._sync()
            return b""
        return self._encode(out) + self._finish_encoder()

    def _pass_on(self, chunk: bytes, decoded: bytes, out: bytes) -> bytes:
        if self._passthrough is None:
            if not decoded and not out:
                if self._held_bytes + len(chunk) <= _MAX_UNDECIDED_BYTES:
                    self._held.append(chunk)
                    self._held_bytes += len(chunk)
                    return b""
                self._passthrough = True
                return self._release_held(chunk)
            if out is decoded:
                self._passthrough = True
                return self._release_held(chunk)
            self._passthrough = False
            self._held = []
        if self._passthrough:
            if out is not decoded and out != decoded:
                # The client is following the upstream's stream: an edit cannot be spliced in.
                self._own_problem(REWRITE_AFTER_PASSTHROUGH)
            return chunk
        return self._encode(out)

    def _after_failure(self, chunk: bytes) -> bytes:
        if self._passthrough is None:
            self._passthrough = True
            return self._release_held(chunk)
        return chunk if self._passthrough else b""

    def _release_held(self, chunk: bytes) -> bytes:
        if not self._held:
            return chunk
        held, self._held, self._held_bytes = self._held, [], 0
        return b"".join([*held, chunk])

    def _encode(self, data: bytes) -> bytes:
        return self._encoder.compress(data) if self._encoder is not None else data

    def _finish_encoder(self) -> bytes:
        return self._encoder.finish() if self._encoder is not None else b""

    def _note_decoder(self) -> None:
        if self._decoder is not None and self._decoder.problem is not None:
            self._own_problem(self._decoder.problem)

    def _own_problem(self, problem: str) -> None:
        if problem not in self._own_problems:
            self._own_problems.append(problem)

    def _sync(self) -> None:
        # Plain attributes (as `UsageStream` declares them), refreshed after every call
        # into `inner`: it changes only then.
        self.usage = self.inner.usage
        self.model = self.inner.model
        problems = list(self.inner.problems)
        problems.extend(problem for problem in self._own_problems if problem not in problems)
        self.problems = problems


# --- Codings ----------------------------------------------------------------------------------


class _ZlibStage:
    """gzip (members in sequence, as `gzip -c a b` writes them) or zlib-wrapped deflate."""

    def __init__(self, wbits: int) -> None:
        self.malformed = False
        self._wbits = wbits
        self._obj = zlib.decompressobj(wbits)

    def decompress(self, data: bytes, limit: int) -> bytes:
        out: list[bytes] = []
        produced = 0
        try:
            while data and not self.malformed:
                if self._obj.eof:
                    self._obj = zlib.decompressobj(self._wbits)
                # max_length 0 would mean "no limit": the + 1 keeps it positive.
                piece = self._obj.decompress(data, limit - produced + 1)
                out.append(piece)
                produced += len(piece)
                if produced > limit:
                    break
                # With output room left, all input was consumed unless this member ended.
                data = self._obj.unused_data if self._obj.eof else b""
        except zlib.error:
            self.malformed = True
        return b"".join(out)

    def finished(self) -> bool:
        return self._obj.eof


class _DeflateStage:
    """HTTP `deflate`: zlib-wrapped per RFC 9110, but raw deflate when the header says not."""

    def __init__(self) -> None:
        self.malformed = False
        self._stage = _ZlibStage(zlib.MAX_WBITS)
        # The input so far, kept until the first output shows the zlib guess was right.
        self._kept: bytearray | None = bytearray()

    def decompress(self, data: bytes, limit: int) -> bytes:
        if self._kept is not None:
            self._kept += data
        out = self._stage.decompress(data, limit)
        if self._kept is not None:
            if self._stage.malformed and not out:
                # Nothing decoded yet: the zlib header was wrong, so start over as raw deflate.
                kept, self._kept = bytes(self._kept), None
                self._stage = _ZlibStage(-zlib.MAX_WBITS)
                out = self._stage.decompress(kept, limit)
            elif out or len(self._kept) > _DEFLATE_RETRY_BYTES:
                self._kept = None
        self.malformed = self._stage.malformed
        return out

    def finished(self) -> bool:
        return self._stage.finished()


class _BrotliStage:
    def __init__(self, brotli: ModuleType) -> None:
        self.malformed = False
        self._brotli = brotli
        self._obj = brotli.Decompressor()

    def decompress(self, data: bytes, limit: int) -> bytes:
        out: list[bytes] = []
        produced = 0
        try:
            piece = self._obj.process(data, output_buffer_limit=limit + 1)
            while True:
                out.append(piece)
                produced += len(piece)
                if produced > limit or self._obj.can_accept_more_data():
                    break
                # Output was capped with more pending: it must be drained before more input.
                piece = self._obj.process(b"", output_buffer_limit=limit - produced + 1)
        except self._brotli.error:
            self.malformed = True
        return b"".join(out)

    def finished(self) -> bool:
        return bool(self._obj.is_finished())


class _EncodingStage(Protocol):
    def compress(self, data: bytes) -> bytes: ...

    def finish(self, data: bytes) -> bytes: ...


class _ZlibEncodingStage:
    def __init__(self, wbits: int) -> None:
        self._obj = zlib.compressobj(_ZLIB_LEVEL, zlib.DEFLATED, wbits)

    def compress(self, data: bytes) -> bytes:
        return self._obj.compress(data) + self._obj.flush(zlib.Z_SYNC_FLUSH)

    def finish(self, data: bytes) -> bytes:
        return self._obj.compress(data) + self._obj.flush(zlib.Z_FINISH)


class _BrotliEncodingStage:
    def __init__(self, brotli: ModuleType) -> None:
        self._obj = brotli.Compressor(quality=_BROTLI_QUALITY)

    def compress(self, data: bytes) -> bytes:
        return self._obj.process(data) + self._obj.flush()

    def finish(self, data: bytes) -> bytes:
        return self._obj.process(data) + self._obj.finish()


def _decoding_stage(coding: str) -> _Stage | None:
    if coding in ("gzip", "x-gzip"):
        return _ZlibStage(16 + zlib.MAX_WBITS)
    if coding == "deflate":
        return _DeflateStage()
    if coding == "br":
        brotli = _brotli()
        return _BrotliStage(brotli) if brotli is not None else None
    return None


def _encoding_stage(coding: str) -> _EncodingStage | None:
    if coding in ("gzip", "x-gzip"):
        return _ZlibEncodingStage(16 + zlib.MAX_WBITS)
    if coding == "deflate":
        # Always the zlib-wrapped form RFC 9110 names, whatever the upstream sent.
        return _ZlibEncodingStage(zlib.MAX_WBITS)
    if coding == "br":
        brotli = _brotli()
        return _BrotliEncodingStage(brotli) if brotli is not None else None
    return None


def _load_brotli() -> ModuleType | None:
    try:
        import brotli  # optional: only `br` needs it
    except ImportError:
        return None
    # Before 1.2 a decompressor cannot bound its output, and one small chunk may expand
    # without limit: better to decode no `br` at all.
    if not hasattr(brotli.Decompressor, "can_accept_more_data"):
        return None
    return brotli


_brotli_module: list[ModuleType | None] = []


def _brotli() -> ModuleType | None:
    if not _brotli_module:
        _brotli_module.append(_load_brotli())
    return _brotli_module[0]


def brotli_available() -> bool:
    """Whether `br` bodies can be decoded here (the brotli package, 1.2 or later)."""
    return _brotli() is not None


def readable_encodings(accept_encoding: str, *, by_magic: bool = False) -> str:
    """An `accept-encoding` value with the codings we cannot decode removed (q-values kept);
    `by_magic`: also those we cannot recognise from the body's first bytes (br, `*`), for a
    response whose headers are not seen.

    Returns the value unchanged when every coding is readable, so callers can compare.
    """
    kept = []
    changed = False
    for part in accept_encoding.split(","):
        coding = part.split(";", 1)[0].strip().lower()
        if not coding:
            continue
        if coding in _RECOGNISABLE or (
            not by_magic and (coding == "*" or (coding == "br" and brotli_available()))
        ):
            kept.append(part.strip())
        else:
            changed = True
    return ", ".join(kept) if changed else accept_encoding


def encoding_by_magic(chunk: bytes) -> str:
    """The content coding a body's first bytes show ("" for none recognised): gzip's magic,
    zlib's header (the `deflate` coding), zstd's frame magic. JSON and SSE bodies start with
    none of them."""
    if chunk[:2] == b"\x1f\x8b":
        return "gzip"
    if chunk[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    if len(chunk) >= 2 and chunk[0] & 0x0F == 8 and (chunk[0] << 8 | chunk[1]) % 31 == 0:
        return "deflate"
    return ""


_RECOGNISABLE = frozenset({"gzip", "x-gzip", "deflate", "identity"})
