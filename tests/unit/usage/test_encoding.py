"""Compressed response bodies: incremental decoding, bounds, re-encoding, and DecodedStream.

A client must see the upstream's bytes exactly, or (when a usage event is hidden) bytes
that decode to the upstream's decoded bytes minus that event, however Envoy cuts them.
"""

from __future__ import annotations

import gzip
import importlib
import itertools
import json
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.usage import Usage, encoding
from extproc.usage.bedrock import ConverseStream
from extproc.usage.encoding import (
    DEFAULT_MAX_OUTPUT,
    MALFORMED,
    OVER_CAP,
    REWRITE_AFTER_PASSTHROUGH,
    TRUNCATED,
    UNSUPPORTED,
    DecodedStream,
    brotli_available,
    decode_body,
    decoder_for,
    encoder_for,
)
from extproc.usage.openai import StreamAccumulator
from tests.support import fixtures_bedrock as fx

# `br` needs the optional brotli package; without it those cases skip (and the rest run).
brotli: Any = importlib.import_module("brotli") if brotli_available() else None
WITH_BROTLI = brotli is not None
requires_brotli = pytest.mark.skipif(not WITH_BROTLI, reason="brotli (>= 1.2) is not installed")

PLAIN = ("Budgets at the gateway: café, 日本語, 🎉. " * 40).encode()


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[start:end] for start, end in itertools.pairwise(bounds)]


def raw_deflate(data: bytes) -> bytes:
    obj = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return obj.compress(data) + obj.flush()


def encode(data: bytes, content_encoding: str) -> bytes:
    """`data` as an upstream would send it, the codings applied in the order listed."""
    for coding in (part.strip() for part in content_encoding.split(",")):
        if coding in ("gzip", "x-gzip"):
            data = gzip.compress(data)
        elif coding == "deflate":
            data = zlib.compress(data)
        elif coding == "br":
            data = brotli.compress(data)
    return data


def encode_streamed(pieces: list[bytes], content_encoding: str) -> list[bytes]:
    """Each piece compressed and flushed as a streaming upstream sends them, then the end."""
    encoder = encoder_for(content_encoding)
    assert encoder is not None
    return [*(encoder.compress(piece) for piece in pieces), encoder.finish()]


CODINGS = ["gzip", "x-gzip", "deflate", "deflate, gzip"] + (["br", "gzip, br"] if WITH_BROTLI else [])


# --- Buffered bodies ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_encoding", [*CODINGS, "GZIP", " x-gzip ", "identity, gzip", "gzip, identity"]
)
def test_decode_body_undoes_every_coding(content_encoding: str) -> None:
    body = encode(PLAIN, content_encoding.strip().lower().replace("identity, ", "").replace(", identity", ""))
    assert decode_body(body, content_encoding) == (PLAIN, None)


def test_raw_deflate_labelled_deflate_decodes_as_browsers_do() -> None:
    assert decode_body(raw_deflate(PLAIN), "deflate") == (PLAIN, None)


@pytest.mark.parametrize("content_encoding", ["", None, "identity", " Identity "])
def test_an_unencoded_body_is_returned_as_the_same_object(content_encoding: str | None) -> None:
    assert decoder_for(content_encoding) is None
    data, problem = decode_body(PLAIN, content_encoding)
    assert data is PLAIN and problem is None


@pytest.mark.parametrize("content_encoding", ["zstd", "compress", "gzip, zstd", "zstd, gzip"])
def test_an_unsupported_coding_decodes_nothing_and_says_so(content_encoding: str) -> None:
    decoder = decoder_for(content_encoding)
    assert decoder is not None and decoder.problem == UNSUPPORTED
    assert decode_body(gzip.compress(PLAIN), content_encoding) == (b"", UNSUPPORTED)
    assert encoder_for(content_encoding) is None


def test_gzip_members_in_sequence_decode_as_one_body() -> None:
    body = gzip.compress(PLAIN[:100]) + gzip.compress(PLAIN[100:])
    assert decode_body(body, "gzip") == (PLAIN, None)


def test_a_truncated_body_keeps_what_decoded_and_says_so() -> None:
    body = gzip.compress(PLAIN)
    data, problem = decode_body(body[:-6], "gzip")  # the trailer cut
    assert (data, problem) == (PLAIN, TRUNCATED)


@requires_brotli
def test_a_truncated_brotli_body_keeps_what_decoded_and_says_so() -> None:
    data, problem = decode_body(brotli.compress(PLAIN)[:-3], "br")
    assert problem == TRUNCATED and PLAIN.startswith(data)


@pytest.mark.parametrize("content_encoding", ["gzip", "deflate", pytest.param("br", marks=requires_brotli)])
def test_garbage_is_malformed_not_an_exception(content_encoding: str) -> None:
    assert decode_body(b"\xff" * 64 + PLAIN, content_encoding) == (b"", MALFORMED)


def test_damage_midway_keeps_what_earlier_chunks_decoded() -> None:
    pieces = encode_streamed([PLAIN[:500], PLAIN[500:]], "gzip")
    decoder = decoder_for("gzip")
    assert decoder is not None
    assert decoder.decompress(pieces[0]) == PLAIN[:500]
    assert decoder.decompress(b"\xff" * 8 + pieces[1]) == b""
    assert decoder.problem == MALFORMED
    assert decoder.decompress(pieces[2]) == b""


def test_trailing_garbage_after_a_gzip_member_is_malformed_but_the_member_stands() -> None:
    assert decode_body(gzip.compress(PLAIN) + b"garbage!", "gzip") == (PLAIN, MALFORMED)


@pytest.mark.parametrize(
    "content_encoding",
    [
        "gzip",
        "deflate",
        pytest.param("br", marks=requires_brotli),
        pytest.param("gzip, br", marks=requires_brotli),
    ],
)
def test_a_zip_bomb_is_capped(content_encoding: str) -> None:
    # 8 MiB of zeros compresses to a few KiB; the cap stops decoding at 1 MiB.
    bomb = encode(bytes(8 << 20), content_encoding)
    assert len(bomb) < 64 << 10
    decoder = decoder_for(content_encoding, max_output=1 << 20)
    assert decoder is not None
    data = decoder.decompress(bomb)
    assert (len(data), decoder.problem) == (1 << 20, OVER_CAP)
    assert decoder.decompress(bomb) == b""


def test_the_default_cap_stops_a_gzip_bomb_at_64_mib() -> None:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1 << 20)
    bomb = b"".join(compressor.compress(block) for _ in range(80)) + compressor.flush()
    assert len(bomb) < 128 << 10  # 80 MiB decoded
    data, problem = decode_body(bomb, "gzip")
    assert (len(data), problem) == (DEFAULT_MAX_OUTPUT, OVER_CAP)


def test_a_bomb_in_pieces_is_capped_over_the_whole_body() -> None:
    bomb = gzip.compress(bytes(4 << 20))
    decoder = decoder_for("gzip", max_output=1 << 20)
    assert decoder is not None
    total = sum(len(decoder.decompress(piece)) for piece in split_at(bomb, list(range(64, len(bomb), 64))))
    assert (total, decoder.problem) == (1 << 20, OVER_CAP)


# --- Incremental decoding and encoding --------------------------------------------------------


@pytest.mark.parametrize("content_encoding", [*CODINGS, "raw deflate"])
def test_every_two_chunk_cut_decodes_to_the_same_bytes(content_encoding: str) -> None:
    plain = PLAIN[:300]
    if content_encoding == "raw deflate":
        body, content_encoding = raw_deflate(plain), "deflate"
    else:
        body = encode(plain, content_encoding)
    for cut in range(len(body) + 1):
        decoder = decoder_for(content_encoding)
        assert decoder is not None
        data = decoder.decompress(body[:cut]) + decoder.decompress(body[cut:]) + decoder.flush()
        assert (data, decoder.problem) == (plain, None), cut


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(CODINGS), st.binary(max_size=3000), st.lists(st.integers(0, 5000), max_size=20))
def test_any_chunking_of_any_body_decodes_to_the_same_bytes(
    content_encoding: str, plain: bytes, cuts: list[int]
) -> None:
    body = encode(plain, content_encoding)
    decoder = decoder_for(content_encoding)
    assert decoder is not None
    pieces = split_at(body, [cut % (len(body) + 1) for cut in cuts])
    data = b"".join(decoder.decompress(piece) for piece in pieces) + decoder.flush()
    assert (data, decoder.problem) == (plain, None)


@pytest.mark.parametrize("content_encoding", CODINGS)
def test_each_encoded_chunk_decodes_in_full_as_it_arrives(content_encoding: str) -> None:
    """The sync flush: a client can show each re-encoded chunk without waiting for the next."""
    pieces = [PLAIN[:7], b"", PLAIN[7:900], PLAIN[900:]]
    encoded = encode_streamed(pieces, content_encoding)
    decoder = decoder_for(content_encoding)
    assert decoder is not None
    for piece, chunk in zip(pieces, encoded, strict=False):
        assert decoder.decompress(chunk) == piece
    assert decoder.decompress(encoded[-1]) == b""
    decoder.flush()
    assert decoder.problem is None
    assert decode_body(b"".join(encoded), content_encoding) == (PLAIN, None)


def test_an_encoder_that_saw_nothing_still_ends_a_valid_stream() -> None:
    encoder = encoder_for("gzip")
    assert encoder is not None
    assert gzip.decompress(encoder.finish()) == b""


def test_without_brotli_only_br_is_unsupported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoding, "_brotli_module", [None])
    assert not brotli_available()
    assert decode_body(b"\x0b\x02\x80hello\x03", "br") == (b"", UNSUPPORTED)
    assert encoder_for("br") is None
    assert decode_body(gzip.compress(PLAIN), "gzip") == (PLAIN, None)


def test_brotli_is_imported_only_when_br_is_met() -> None:
    code = (
        "import sys, extproc.usage.encoding as e; assert 'brotli' not in sys.modules; e.decoder_for('gzip')"
    )
    code += "; assert 'brotli' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[3])


# --- DecodedStream over OpenAI chat SSE -------------------------------------------------------


def chunk_event(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1694268190,
        "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        "usage": None,
    }


def sse(obj: Any) -> bytes:
    payload = obj if isinstance(obj, bytes) else json.dumps(obj, ensure_ascii=False).encode()
    return b"data: " + payload + b"\n\n"


USAGE_CHUNK = {
    "id": "chatcmpl-123",
    "object": "chat.completion.chunk",
    "created": 1694268190,
    "model": "gpt-4o-2024-08-06",
    "choices": [],
    "usage": {
        "prompt_tokens": 2048,
        "completion_tokens": 683,
        "total_tokens": 2731,
        "prompt_tokens_details": {"cached_tokens": 1920},
        "completion_tokens_details": {"reasoning_tokens": 0},
    },
}
OPENAI_USAGE = Usage(input_tokens=2048, output_tokens=683, cached_input_tokens=1920)
BEFORE = b"".join(
    sse(chunk)
    for chunk in [
        chunk_event({"role": "assistant", "content": ""}),
        chunk_event({"content": "Budgets "}),
        chunk_event({"content": "café 日本語 🎉"}),
        chunk_event({}, "stop"),
    ]
)
USAGE_EVENT = sse(USAGE_CHUNK)
AFTER = sse(b"[DONE]")
SSE_STREAM = BEFORE + USAGE_EVENT + AFTER


def upstream_chunks(content_encoding: str, piece_cuts: list[int], wire_cuts: list[int]) -> list[bytes]:
    """A compressed SSE stream as Envoy hands it on: flushed by the upstream at `piece_cuts`,
    then cut again anywhere at `wire_cuts`."""
    pieces = split_at(SSE_STREAM, [cut % (len(SSE_STREAM) + 1) for cut in piece_cuts])
    wire = b"".join(encode_streamed(pieces, content_encoding))
    return split_at(wire, [cut % (len(wire) + 1) for cut in wire_cuts])


def run(stream: DecodedStream, chunks: list[bytes]) -> list[bytes]:
    return [*(stream.feed(chunk) for chunk in chunks), stream.finish()]


@pytest.mark.parametrize("content_encoding", CODINGS)
def test_a_hidden_usage_event_leaves_the_rest_byte_exact_after_decoding(content_encoding: str) -> None:
    chunks = upstream_chunks(content_encoding, [100, 400, 700], [3, 50, 51, 300])
    stream = DecodedStream(StreamAccumulator(hide_usage_chunk=True), content_encoding)
    client = b"".join(run(stream, chunks))
    assert decode_body(client, content_encoding) == (BEFORE + AFTER, None)
    assert (stream.usage, stream.model, stream.problems) == (OPENAI_USAGE, "gpt-4o-2024-08-06", [])


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(CODINGS),
    st.lists(st.integers(0, 5000), max_size=8),
    st.lists(st.integers(0, 5000), max_size=25),
)
def test_any_chunking_hides_exactly_the_usage_event(
    content_encoding: str, piece_cuts: list[int], wire_cuts: list[int]
) -> None:
    stream = DecodedStream(StreamAccumulator(hide_usage_chunk=True), content_encoding)
    client = run(stream, upstream_chunks(content_encoding, piece_cuts, wire_cuts))
    # The client decodes incrementally too: every chunk it gets must decode as it arrives.
    decoder = decoder_for(content_encoding)
    assert decoder is not None
    decoded = b"".join(decoder.decompress(chunk) for chunk in client) + decoder.flush()
    assert (decoded, decoder.problem) == (BEFORE + AFTER, None)
    assert (stream.usage, stream.problems) == (OPENAI_USAGE, [])


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(CODINGS),
    st.lists(st.integers(0, 5000), max_size=8),
    st.lists(st.integers(0, 5000), max_size=25),
)
def test_without_hiding_every_compressed_chunk_passes_as_the_same_object(
    content_encoding: str, piece_cuts: list[int], wire_cuts: list[int]
) -> None:
    chunks = upstream_chunks(content_encoding, piece_cuts, wire_cuts)
    stream = DecodedStream(StreamAccumulator(hide_usage_chunk=False), content_encoding)
    out = run(stream, chunks)
    assert b"".join(out) == b"".join(chunks)
    # Chunks that decode to nothing (a gzip header) wait for the first that decodes; from
    # then on each chunk passes on as the very object that came in.
    first = next(index for index, sent in enumerate(out) if sent)
    assert all(sent is got for sent, got in zip(out[first + 1 : -1], chunks[first + 1 :], strict=True))
    assert out[-1] == b""
    assert (stream.usage, stream.problems) == (OPENAI_USAGE, [])


def test_without_hiding_the_first_decoding_chunk_releases_the_held_header() -> None:
    first, rest, end = encode_streamed([SSE_STREAM[:100], SSE_STREAM[100:]], "gzip")
    stream = DecodedStream(StreamAccumulator(hide_usage_chunk=False), "gzip")
    assert stream.feed(first[:5]) == b""  # inside the gzip header: the mode is not known yet
    assert stream.feed(first[5:]) == first  # a whole flushed piece decodes: pass through
    assert stream.feed(rest) is rest
    assert stream.feed(end) is end
    assert stream.finish() == b""
    assert stream.usage == OPENAI_USAGE


def test_an_empty_compressed_body_passes_through_untouched() -> None:
    wire = gzip.compress(b"")
    stream = DecodedStream(StreamAccumulator(hide_usage_chunk=True), "gzip")
    assert b"".join(run(stream, [wire[:4], wire[4:]])) == wire
    assert stream.problems == ["no usage"]


def test_an_unencoded_stream_goes_straight_to_the_inner_reader() -> None:
    stream = DecodedStream(StreamAccumulator(hide_usage_chunk=False), "identity")
    assert stream.feed(SSE_STREAM) is SSE_STREAM
    assert stream.finish() == b""
    assert stream.usage == OPENAI_USAGE


def test_an_unsupported_coding_passes_through_and_reports_both_problems() -> None:
    wire = gzip.compress(SSE_STREAM)
    stream = DecodedStream(StreamAccumulator(hide_usage_chunk=True), "zstd")
    assert stream.feed(wire) is wire
    assert stream.finish() == b""
    assert stream.usage is None
    assert stream.problems == ["no usage", UNSUPPORTED]


def test_a_bomb_in_a_passed_through_stream_stops_decoding_but_not_the_bytes() -> None:
    bomb = gzip.compress(SSE_STREAM + bytes(4 << 20))
    chunks = split_at(bomb, [1000, 2000])
    stream = DecodedStream(StreamAccumulator(hide_usage_chunk=False), "gzip", max_output=1 << 20)
    out = run(stream, chunks)
    assert b"".join(out) == bomb
    assert stream.usage == OPENAI_USAGE  # read before the cap
    assert stream.problems == [OVER_CAP]


def test_damage_in_a_re_encoded_stream_ends_it_cleanly_where_decoding_stopped() -> None:
    pieces = encode_streamed([BEFORE, USAGE_EVENT, AFTER], "gzip")
    stream = DecodedStream(StreamAccumulator(hide_usage_chunk=True), "gzip")
    client = run(stream, [pieces[0], b"\xff" * 16, pieces[1], pieces[2], pieces[3]])
    assert decode_body(b"".join(client), "gzip") == (BEFORE, None)
    assert stream.usage is None
    assert stream.problems == ["no usage", MALFORMED]


def test_a_truncated_stream_is_a_problem() -> None:
    wire = gzip.compress(SSE_STREAM)[:-8]
    stream = DecodedStream(StreamAccumulator(hide_usage_chunk=False), "gzip")
    assert b"".join(run(stream, [wire])) == wire
    assert stream.usage == OPENAI_USAGE
    assert stream.problems == [TRUNCATED]


class _RewritesLater:
    """An inner reader breaking the contract: identity at first, then an edit."""

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.model: str | None = None
        self.problems: list[str] = []
        self._calls = 0

    def feed(self, chunk: bytes) -> bytes:
        self._calls += 1
        return chunk if self._calls == 1 else b"edited"

    def finish(self) -> bytes:
        return b""


def test_an_edit_after_passing_through_cannot_be_spliced_in_and_is_reported() -> None:
    pieces = encode_streamed([b"first", b"second"], "gzip")
    stream = DecodedStream(_RewritesLater(), "gzip")
    out = run(stream, pieces)
    assert b"".join(out) == b"".join(pieces)
    assert stream.problems == [REWRITE_AFTER_PASSTHROUGH]


def test_a_gzipped_converse_stream_passes_through_with_its_usage() -> None:
    body = fx.stream_body(1200, 350, cache_read_tokens=4000, cache_write_tokens=800)
    wire = gzip.compress(body)
    chunks = split_at(wire, [10, 60, 200])
    stream = DecodedStream(ConverseStream(), "gzip")
    out = [stream.feed(chunk) for chunk in chunks]
    assert stream.finish() == b""
    assert b"".join(out) == wire
    # Chunks are held only until one decodes; from then on each passes on as itself.
    first = next(index for index, sent in enumerate(out) if sent)
    assert out[:first] == [b""] * first
    assert all(sent is got for sent, got in zip(out[first + 1 :], chunks[first + 1 :], strict=True))
    assert stream.usage == Usage(
        input_tokens=6000, output_tokens=350, cached_input_tokens=4000, cache_creation_input_tokens=800
    )


@pytest.mark.parametrize(
    ("offered", "kept"),
    [
        ("gzip, deflate, br", "gzip, deflate, br"),
        ("gzip, deflate, br, zstd", "gzip, deflate, br"),
        ("zstd;q=1.0, gzip;q=0.5", "gzip;q=0.5"),
        ("zstd", ""),
        ("identity", "identity"),
    ],
)
def test_accept_encoding_keeps_only_codings_we_can_read(offered: str, kept: str) -> None:
    from extproc.usage.encoding import readable_encodings

    assert readable_encodings(offered) == kept
