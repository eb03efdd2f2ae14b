"""AWS event stream framing: decoding, CRCs, resynchronisation and bounded buffering.

The known-answer vectors are the event stream test vectors AWS publishes with its SDKs
(aws-c-event-stream's, as botocore's `tests/unit/test_eventstream.py` carries them): exact
bytes with hand-computed prelude and message CRCs.
"""

from __future__ import annotations

import itertools
import struct
import uuid
import zlib
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.usage.eventstream import (
    MALFORMED_HEADERS,
    MALFORMED_PRELUDE,
    MESSAGE_CRC_MISMATCH,
    MESSAGE_OVER_CAP,
    PRELUDE_CRC_MISMATCH,
    TRUNCATED,
    EventStreamDecoder,
    HeaderType,
    Message,
    TypedValue,
    encode_message,
)

# (wire bytes, headers as encode_message takes them, decoded headers, payload)
EMPTY = (b"\x00\x00\x00\x10\x00\x00\x00\x00\x05\xc2H\xeb}\x98\xc8\xff", {}, {}, b"")
INT8 = (
    b"\x00\x00\x00\x17\x00\x00\x00\x07)\x86\x01X\x04byte\x02\xff\xc2\xf8i\xdc",
    {"byte": TypedValue(HeaderType.BYTE, -1)},
    {"byte": -1},
    b"",
)
INT16 = (
    b"\x00\x00\x00\x19\x00\x00\x00\tq\x0e\x92>\x05short\x03\xff\xff\xb2|\xb6\xcc",
    {"short": TypedValue(HeaderType.SHORT, -1)},
    {"short": -1},
    b"",
)
INT32 = (
    b"\x00\x00\x00\x1d\x00\x00\x00\r\x83\xe3\xf0\xe7\x07integer\x04\xff\xff\xff\xff\x8b\x8e\x12\xeb",
    {"integer": -1},
    {"integer": -1},
    b"",
)
INT64 = (
    b"\x00\x00\x00\x1e\x00\x00\x00\x0e]J\xdb\x8d\x04long\x05\xff\xff\xff\xff\xff\xff\xff\xffK\xc22\xda",
    {"long": TypedValue(HeaderType.LONG, -1)},
    {"long": -1},
    b"",
)
PAYLOAD_NO_HEADERS = (
    b"\x00\x00\x00\x1d\x00\x00\x00\x00\xfdR\x8cZ{'foo':'bar'}\xc3e96",
    {},
    {},
    b"{'foo':'bar'}",
)
PAYLOAD_ONE_STR_HEADER = (
    b"\x00\x00\x00=\x00\x00\x00 \x07\xfd\x83\x96\x0ccontent-type\x07\x00\x10"
    b"application/json{'foo':'bar'}\x8d\x9c\x08\xb1",
    {"content-type": "application/json"},
    {"content-type": "application/json"},
    b"{'foo':'bar'}",
)
ALL_HEADER_TYPES = (
    b"\x00\x00\x00\x62\x00\x00\x00\x52\x03\xb5\xcb\x9c"
    b"\x010\x00\x011\x01\x012\x02\x02\x013\x03\x00\x03"
    b"\x014\x04\x00\x00\x00\x04\x015\x05\x00\x00\x00\x00\x00\x00\x00\x05"
    b"\x016\x06\x00\x05bytes\x017\x07\x00\x04utf8"
    b"\x018\x08\x00\x00\x00\x00\x00\x00\x00\x08\x019\x090123456789abcdef"
    b"\x63\x35\x36\x71",
    {
        "0": True,
        "1": False,
        "2": TypedValue(HeaderType.BYTE, 2),
        "3": TypedValue(HeaderType.SHORT, 3),
        "4": 4,
        "5": TypedValue(HeaderType.LONG, 5),
        "6": b"bytes",
        "7": "utf8",
        "8": datetime(1970, 1, 1, 0, 0, 0, 8000, tzinfo=UTC),
        "9": uuid.UUID(bytes=b"0123456789abcdef"),
    },
    {
        "0": True,
        "1": False,
        "2": 2,
        "3": 3,
        "4": 4,
        "5": 5,
        "6": b"bytes",
        "7": "utf8",
        "8": datetime(1970, 1, 1, 0, 0, 0, 8000, tzinfo=UTC),
        "9": uuid.UUID(bytes=b"0123456789abcdef"),
    },
    b"",
)
ERROR_MESSAGE = (
    b"\x00\x00\x00\x52\x00\x00\x00\x42\xbf\x23\x63\x7e"
    b"\x0d:message-type\x07\x00\x05error"
    b"\x0b:error-code\x07\x00\x04code"
    b"\x0e:error-message\x07\x00\x07message"
    b"\x6b\x6c\xea\x3d",
    {":message-type": "error", ":error-code": "code", ":error-message": "message"},
    {":message-type": "error", ":error-code": "code", ":error-message": "message"},
    b"",
)
VECTORS = [
    EMPTY,
    INT8,
    INT16,
    INT32,
    INT64,
    PAYLOAD_NO_HEADERS,
    PAYLOAD_ONE_STR_HEADER,
    ALL_HEADER_TYPES,
    ERROR_MESSAGE,
]
ALL_WIRE = b"".join(wire for wire, _, _, _ in VECTORS)
ALL_DECODED = [Message(headers=decoded, payload=payload) for _, _, decoded, payload in VECTORS]


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[start:end] for start, end in itertools.pairwise(bounds)]


def decode(chunks: list[bytes], decoder: EventStreamDecoder | None = None) -> list[Message]:
    decoder = decoder or EventStreamDecoder()
    messages = [message for chunk in chunks for message in decoder.feed(chunk)]
    decoder.finish()
    return messages


def frame(headers_block: bytes, payload: bytes = b"") -> bytes:
    """A message with valid CRCs around an arbitrary (possibly malformed) header block."""
    lengths = struct.pack(">II", 16 + len(headers_block) + len(payload), len(headers_block))
    body = lengths + struct.pack(">I", zlib.crc32(lengths)) + headers_block + payload
    return body + struct.pack(">I", zlib.crc32(body))


def prelude(total: int, headers_length: int) -> bytes:
    lengths = struct.pack(">II", total, headers_length)
    return lengths + struct.pack(">I", zlib.crc32(lengths))


# --- Known answers --------------------------------------------------------------------------


@pytest.mark.parametrize(("wire", "headers", "decoded", "payload"), VECTORS)
def test_aws_vectors_decode_to_their_headers_and_payload(wire, headers, decoded, payload) -> None:
    decoder = EventStreamDecoder()
    assert decoder.feed(wire) == [Message(headers=decoded, payload=payload)]
    decoder.finish()
    assert decoder.problems == []


@pytest.mark.parametrize(("wire", "headers", "decoded", "payload"), VECTORS)
def test_encode_message_reproduces_the_aws_vectors_byte_for_byte(wire, headers, decoded, payload) -> None:
    assert encode_message(headers, payload) == wire


def test_the_empty_message_crcs_are_the_published_ones() -> None:
    wire = EMPTY[0]
    assert struct.unpack(">I", wire[8:12])[0] == 0x05C248EB == zlib.crc32(wire[:8])
    assert struct.unpack(">I", wire[12:16])[0] == 0x7D98C8FF == zlib.crc32(wire[:12])


def test_all_vectors_in_one_buffer_decode_in_order() -> None:
    assert decode([ALL_WIRE]) == ALL_DECODED


def test_every_two_chunk_cut_gives_the_same_messages() -> None:
    for cut in range(len(ALL_WIRE) + 1):
        decoder = EventStreamDecoder()
        assert decode([ALL_WIRE[:cut], ALL_WIRE[cut:]], decoder) == ALL_DECODED, cut
        assert decoder.problems == [], cut


def test_byte_by_byte_chunks_give_the_same_messages() -> None:
    assert decode([ALL_WIRE[i : i + 1] for i in range(len(ALL_WIRE))]) == ALL_DECODED


@settings(max_examples=300)
@given(st.lists(st.integers(0, 2000), max_size=30))
def test_any_chunking_gives_the_same_messages(cuts: list[int]) -> None:
    decoder = EventStreamDecoder()
    assert decode(split_at(ALL_WIRE, [cut % (len(ALL_WIRE) + 1) for cut in cuts]), decoder) == ALL_DECODED
    assert decoder.problems == []


header_values = st.one_of(
    st.booleans(),
    st.integers(-(1 << 63), (1 << 63) - 1),
    st.binary(max_size=40),
    st.text(max_size=40),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)).map(
        lambda moment: moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    ),
    st.uuids(),
)


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(
            st.dictionaries(st.text(min_size=1, max_size=20), header_values, max_size=6),
            st.binary(max_size=200),
        ),
        min_size=1,
        max_size=5,
    ),
    st.lists(st.integers(0, 5000), max_size=10),
)
def test_encoded_messages_round_trip_at_any_chunking(messages, cuts: list[int]) -> None:
    wire = b"".join(encode_message(headers, payload) for headers, payload in messages)
    decoder = EventStreamDecoder()
    decoded = decode(split_at(wire, [cut % (len(wire) + 1) for cut in cuts]), decoder)
    assert decoded == [Message(headers=headers, payload=payload) for headers, payload in messages]
    assert decoder.problems == []


# --- Damage ---------------------------------------------------------------------------------


def test_a_corrupted_payload_skips_that_message_only() -> None:
    # AWS's CORRUPTED_PAYLOAD vector: one payload byte changed, CRCs as before.
    corrupted = b"\x00\x00\x00\x1d\x00\x00\x00\x00\xfdR\x8cZ{'foo':'bar'\x8d\xc3e96"
    decoder = EventStreamDecoder()
    messages = decode([EMPTY[0] + corrupted + PAYLOAD_ONE_STR_HEADER[0]], decoder)
    assert messages == [ALL_DECODED[0], ALL_DECODED[6]]
    assert decoder.problems == [MESSAGE_CRC_MISMATCH]
    assert not decoder.stopped


def test_corrupted_headers_fail_the_message_crc_and_skip_that_message() -> None:
    corrupted = PAYLOAD_ONE_STR_HEADER[0].replace(b"content-type", b"content+type")
    decoder = EventStreamDecoder()
    assert decode([corrupted + EMPTY[0]], decoder) == [ALL_DECODED[0]]
    assert decoder.problems == [MESSAGE_CRC_MISMATCH]


@pytest.mark.parametrize(
    "corrupted",
    [
        # AWS's CORRUPTED_LENGTH and CORRUPTED_HEADER_LENGTH vectors: the prelude CRC fails.
        b"\x01\x00\x00\x1d\x00\x00\x00\x00\xfdR\x8cZ{'foo':'bar'}\xc3e96",
        b"\x00\x00\x00=\xff\x00\x01\x02\x07\xfd\x83\x96\x0ccontent-type\x07\x00\x10application/json"
        b"{'foo':'bar'}\x8d\x9c\x08\xb1",
    ],
)
def test_a_corrupted_prelude_stops_decoding_for_good(corrupted: bytes) -> None:
    decoder = EventStreamDecoder()
    messages = decode([EMPTY[0], corrupted, EMPTY[0], EMPTY[0]], decoder)
    assert messages == [ALL_DECODED[0]]
    assert decoder.problems == [PRELUDE_CRC_MISMATCH]
    assert decoder.stopped
    # Nothing after the damage is kept: it is counted and let go.
    assert decoder.unparsed_bytes == len(corrupted) + 2 * len(EMPTY[0])


def test_a_duplicate_header_is_malformed_like_aws_sdks_say() -> None:
    # AWS's DUPLICATE_HEADER vector (valid CRCs, `test` twice).
    duplicate = (
        b"\x00\x00\x00\x24\x00\x00\x00\x14\x4b\xb9\x82\xd0\x04test\x04asdf\x04test\x04asdf\xf3\xf4\x75\x63"
    )
    decoder = EventStreamDecoder()
    assert decode([duplicate + EMPTY[0]], decoder) == [ALL_DECODED[0]]
    assert decoder.problems == [MALFORMED_HEADERS]


@pytest.mark.parametrize(
    "block",
    [
        b"\x04name\x0a",  # value type 10 does not exist
        b"\x04name\x07\x00\x09abc",  # a string running past the header block
        b"\x04name\x05\x00\x00",  # a long cut short
        b"\x04name\x07\x00\x02\xff\xfe",  # a string that is not UTF-8
        b"\x02\xff\xfe\x00",  # a name that is not UTF-8
        b"\x09name",  # a name running past the block
        b"\x04name",  # a name with no value type
        b"\x04name\x08\x7f\xff\xff\xff\xff\xff\xff\xff",  # a timestamp past datetime's range
    ],
)
def test_malformed_headers_skip_the_message_and_decoding_goes_on(block: bytes) -> None:
    decoder = EventStreamDecoder()
    assert decode([frame(block, b"payload") + EMPTY[0]], decoder) == [ALL_DECODED[0]]
    assert decoder.problems == [MALFORMED_HEADERS]
    assert not decoder.stopped


@pytest.mark.parametrize(("total", "headers_length"), [(15, 0), (0, 0), (20, 5), (16, 1)])
def test_impossible_lengths_stop_decoding(total: int, headers_length: int) -> None:
    decoder = EventStreamDecoder()
    assert decode([prelude(total, headers_length) + b"\x00" * 32 + EMPTY[0]], decoder) == []
    assert decoder.problems == [MALFORMED_PRELUDE]
    assert decoder.stopped


def test_a_message_over_the_cap_stops_decoding_without_buffering_it() -> None:
    decoder = EventStreamDecoder(max_message_bytes=1024)
    assert decoder.feed(EMPTY[0] + prelude(1 << 20, 0)) == [ALL_DECODED[0]]
    assert decoder.problems == [MESSAGE_OVER_CAP]
    assert decoder.stopped
    for _ in range(4):
        assert decoder.feed(b"\x00" * 4096) == []
    assert len(decoder._buf) == 0
    assert decoder.unparsed_bytes == 12 + 4 * 4096


def test_the_default_cap_is_awss_16_mib_message_limit() -> None:
    decoder = EventStreamDecoder()
    assert decoder.feed(prelude(16 * 1024 * 1024 + 1, 0)) == []
    assert decoder.problems == [MESSAGE_OVER_CAP]
    decoder = EventStreamDecoder()
    assert decoder.feed(prelude(16 * 1024 * 1024, 0)) == []
    assert decoder.problems == []


def test_a_stream_cut_mid_message_is_truncated() -> None:
    decoder = EventStreamDecoder()
    assert decoder.feed(EMPTY[0] + PAYLOAD_ONE_STR_HEADER[0][:30]) == [ALL_DECODED[0]]
    decoder.finish()
    assert decoder.problems == [TRUNCATED]
    assert decoder.unparsed_bytes == 30


def test_only_the_incomplete_message_is_held() -> None:
    decoder = EventStreamDecoder()
    decoder.feed(ALL_WIRE + PAYLOAD_ONE_STR_HEADER[0][:20])
    assert bytes(decoder._buf) == PAYLOAD_ONE_STR_HEADER[0][:20]


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=64), max_size=20))
def test_arbitrary_bytes_never_raise(chunks: list[bytes]) -> None:
    decoder = EventStreamDecoder(max_message_bytes=4096)
    for chunk in chunks:
        for message in decoder.feed(chunk):
            assert isinstance(message.payload, bytes)
    decoder.finish()
    assert len(decoder.problems) == len(set(decoder.problems))


@settings(max_examples=200)
@given(st.integers(0, len(ALL_WIRE) - 1), st.integers(1, 255))
def test_any_single_byte_corruption_never_raises_nor_yields_a_wrong_message(position: int, flip: int) -> None:
    damaged = bytearray(ALL_WIRE)
    damaged[position] ^= flip
    decoder = EventStreamDecoder()
    messages = decode([bytes(damaged)], decoder)
    # CRC32 catches every single-byte change: what decodes is an undamaged message.
    assert all(message in ALL_DECODED for message in messages)
    assert decoder.problems


def test_encode_message_rejects_values_the_format_cannot_carry() -> None:
    with pytest.raises(ValueError):
        encode_message({"n": 1 << 63})
    with pytest.raises(ValueError):
        encode_message({"n": TypedValue(HeaderType.BYTE, 128)})
    with pytest.raises(ValueError):
        encode_message({"x" * 256: True})
    with pytest.raises(ValueError):
        encode_message({"s": "x" * 65536})
    with pytest.raises(ValueError):
        encode_message({"t": datetime(2024, 1, 1)})  # naive: which instant?
