"""AWS event stream framing (`application/vnd.amazon.eventstream`), decoded incrementally.

Bedrock's ConverseStream answers in binary frames rather than SSE. Each message is:

    prelude   total length (u32 BE), headers length (u32 BE), CRC32 of those 8 bytes (u32 BE)
    headers   per header: name length (u8), name (UTF-8), value type (u8), value
    payload   total length - headers length - 16 bytes
    CRC32     of everything before it, prelude included (u32 BE)

Header value types: 0 true, 1 false, 2 byte (i8), 3 short (i16), 4 integer (i32), 5 long
(i64), 6 bytes (u16 length + bytes), 7 string (u16 length + UTF-8), 8 timestamp (i64
milliseconds since the epoch), 9 UUID (16 bytes). All integers are big-endian; CRCs are
the gzip CRC32 (`zlib.crc32`).

Envoy cuts the body anywhere, so the decoder keeps an incomplete message until it
completes. Nothing here raises on upstream bytes: a bad message CRC or malformed headers
skip that one message (the prelude still says where the next starts); a prelude that
fails its CRC, declares impossible lengths or a message over the size cap leaves no way to
find the next message, so decoding stops for good. Problems come from a closed vocabulary.
"""

from __future__ import annotations

import enum
import struct
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeAlias

# AWS's own limit on one message (aws-c-event-stream's AWS_EVENT_STREAM_MAX_MESSAGE_SIZE):
# the buffer never holds more than one message, so this bounds memory per stream.
DEFAULT_MAX_MESSAGE_BYTES = 16 << 20

PRELUDE_CRC_MISMATCH = "eventstream prelude CRC mismatch"
MALFORMED_PRELUDE = "malformed eventstream prelude"
MESSAGE_OVER_CAP = "eventstream message over the size cap"
MESSAGE_CRC_MISMATCH = "eventstream message CRC mismatch"
MALFORMED_HEADERS = "malformed eventstream headers"
TRUNCATED = "eventstream truncated"

_PRELUDE = struct.Struct(">III")
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
_PRELUDE_BYTES = _PRELUDE.size  # lengths and their CRC
_OVERHEAD = _PRELUDE_BYTES + _U32.size  # prelude plus the message CRC
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INT_RANGES = {2: 1 << 7, 3: 1 << 15, 4: 1 << 31, 5: 1 << 63}
_INT_FORMATS = {
    2: struct.Struct(">b"),
    3: struct.Struct(">h"),
    4: struct.Struct(">i"),
    5: struct.Struct(">q"),
}
_I64 = _INT_FORMATS[5]

HeaderValue: TypeAlias = bool | int | bytes | str | datetime | uuid.UUID


class HeaderType(enum.IntEnum):
    """The wire type codes of header values."""

    BOOL_TRUE = 0
    BOOL_FALSE = 1
    BYTE = 2
    SHORT = 3
    INTEGER = 4
    LONG = 5
    BYTES = 6
    STRING = 7
    TIMESTAMP = 8
    UUID = 9


@dataclass(frozen=True, slots=True)
class TypedValue:
    """A header value with its wire type spelled out, for `encode_message`.

    Plain values pick their type (bool, int as integer or long, bytes, str, datetime,
    UUID); this is for the integer widths a plain int cannot say (byte, short, long).
    """

    type: HeaderType
    value: HeaderValue


@dataclass(frozen=True, slots=True)
class Message:
    """One decoded message: header values by name (integers of every width as int,
    timestamps as aware UTC datetimes) and the raw payload."""

    headers: Mapping[str, HeaderValue]
    payload: bytes


class EventStreamDecoder:
    """Turns arbitrarily cut body chunks into complete, CRC-checked messages.

    At most one incomplete message is held, and none over `max_message_bytes`. Once
    `stopped`, chunks are no longer kept or parsed; `unparsed_bytes` counts them.
    """

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.max_message_bytes = max_message_bytes
        self.problems: list[str] = []
        # Sticky: framing was lost and the rest of the stream cannot be parsed.
        self.stopped = False
        self.unparsed_bytes = 0
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> list[Message]:
        """Adds a chunk; returns the messages it completed, in order."""
        if self.stopped:
            self.unparsed_bytes += len(chunk)
            return []
        if not chunk:
            return []
        self._buf += chunk
        messages: list[Message] = []
        pos = 0
        size = len(self._buf)
        # The view must be released before the buffer is resized below.
        with memoryview(self._buf) as view:
            while size - pos >= _PRELUDE_BYTES:
                total, headers_length, prelude_crc = _PRELUDE.unpack_from(view, pos)
                problem = self._prelude_problem(view[pos : pos + 8], total, headers_length, prelude_crc)
                if problem is not None:
                    self._stop(problem, size - pos)
                    break
                if size - pos < total:
                    break  # wait for the rest of this message
                end = pos + total
                message = self._message(view[pos:end], headers_length)
                if message is not None:
                    messages.append(message)
                pos = end
        if self.stopped:
            self._buf.clear()
        elif pos:
            # One compaction per chunk, not per message: many small messages stay linear.
            del self._buf[:pos]
        return messages

    def finish(self) -> None:
        """Ends the stream: a message still incomplete is a problem (the stream was cut)."""
        if self._buf and not self.stopped:
            self._problem(TRUNCATED)
            self.unparsed_bytes += len(self._buf)
        self._buf.clear()

    def _prelude_problem(self, lengths: memoryview, total: int, headers_length: int, crc: int) -> str | None:
        if zlib.crc32(lengths) != crc:
            return PRELUDE_CRC_MISMATCH
        if total < _OVERHEAD or headers_length > total - _OVERHEAD:
            return MALFORMED_PRELUDE
        if total > self.max_message_bytes:
            return MESSAGE_OVER_CAP
        return None

    def _message(self, frame: memoryview, headers_length: int) -> Message | None:
        # The prelude was sound, so the next message starts right after this one even if
        # this one is damaged: skip it and go on.
        (crc,) = _U32.unpack_from(frame, len(frame) - 4)
        if zlib.crc32(frame[:-4]) != crc:
            self._problem(MESSAGE_CRC_MISMATCH)
            return None
        headers_end = _PRELUDE_BYTES + headers_length
        headers = _parse_headers(frame[_PRELUDE_BYTES:headers_end])
        if headers is None:
            self._problem(MALFORMED_HEADERS)
            return None
        return Message(headers=headers, payload=bytes(frame[headers_end:-4]))

    def _stop(self, problem: str, pending: int) -> None:
        self._problem(problem)
        self.stopped = True
        self.unparsed_bytes += pending

    def _problem(self, problem: str) -> None:
        # The vocabulary is closed, so de-duplicating bounds the list on any stream.
        if problem not in self.problems:
            self.problems.append(problem)


def _parse_headers(data: memoryview) -> dict[str, HeaderValue] | None:
    """The header block as a dict; None when it is malformed in any way.

    A repeated name is malformed too, as AWS's SDKs treat it: a second `:event-type`
    could otherwise make a message read as something it is not.
    """
    headers: dict[str, HeaderValue] = {}
    pos = 0
    end = len(data)
    try:
        while pos < end:
            name_length = data[pos]
            pos += 1
            if pos + name_length + 1 > end:
                return None
            name = bytes(data[pos : pos + name_length]).decode("utf-8")
            pos += name_length
            kind = data[pos]
            pos += 1
            value, pos = _parse_value(data, pos, kind)
            if name in headers:
                return None
            headers[name] = value
    except (ValueError, struct.error, IndexError, OverflowError):
        # UnicodeDecodeError is a ValueError; struct.error and IndexError mean a value
        # runs past the block; OverflowError a timestamp beyond datetime's range.
        return None
    return headers


def _parse_value(data: memoryview, pos: int, kind: int) -> tuple[HeaderValue, int]:
    """One header value at `pos`; raises (caught by the caller) when it is malformed."""
    if kind == HeaderType.BOOL_TRUE:
        return True, pos
    if kind == HeaderType.BOOL_FALSE:
        return False, pos
    if kind in _INT_FORMATS:
        fmt = _INT_FORMATS[kind]
        _check(data, pos, fmt.size)
        return fmt.unpack_from(data, pos)[0], pos + fmt.size
    if kind in (HeaderType.BYTES, HeaderType.STRING):
        _check(data, pos, 2)
        (length,) = _U16.unpack_from(data, pos)
        pos += 2
        _check(data, pos, length)
        raw = bytes(data[pos : pos + length])
        return (raw.decode("utf-8") if kind == HeaderType.STRING else raw), pos + length
    if kind == HeaderType.TIMESTAMP:
        _check(data, pos, 8)
        (millis,) = _I64.unpack_from(data, pos)
        return _EPOCH + timedelta(milliseconds=millis), pos + 8
    if kind == HeaderType.UUID:
        _check(data, pos, 16)
        return uuid.UUID(bytes=bytes(data[pos : pos + 16])), pos + 16
    raise ValueError(f"unknown header value type {kind}")


def _check(data: memoryview, pos: int, length: int) -> None:
    if pos + length > len(data):
        raise ValueError("header value runs past the header block")


def encode_message(headers: Mapping[str, HeaderValue | TypedValue], payload: bytes = b"") -> bytes:
    """One message in wire form, CRCs included: what fixtures and tests build streams from.

    Raises ValueError on values the format cannot carry (it encodes our own data only).
    """
    block = b"".join(_encode_header(name, value) for name, value in headers.items())
    total = _OVERHEAD + len(block) + len(payload)
    lengths = _U32.pack(total) + _U32.pack(len(block))
    prelude = lengths + _U32.pack(zlib.crc32(lengths))
    body = prelude + block + payload
    return body + _U32.pack(zlib.crc32(body))


def _encode_header(name: str, value: HeaderValue | TypedValue) -> bytes:
    raw_name = name.encode("utf-8")
    if len(raw_name) > 255:
        raise ValueError(f"header name {name!r} is over 255 bytes")
    typed = value if isinstance(value, TypedValue) else TypedValue(_type_of(value), value)
    return bytes([len(raw_name)]) + raw_name + _encode_value(typed)


def _type_of(value: HeaderValue) -> HeaderType:
    if isinstance(value, bool):
        return HeaderType.BOOL_TRUE if value else HeaderType.BOOL_FALSE
    if isinstance(value, int):
        return HeaderType.INTEGER if -(1 << 31) <= value < 1 << 31 else HeaderType.LONG
    if isinstance(value, bytes):
        return HeaderType.BYTES
    if isinstance(value, str):
        return HeaderType.STRING
    if isinstance(value, datetime):
        return HeaderType.TIMESTAMP
    return HeaderType.UUID


def _encode_value(typed: TypedValue) -> bytes:
    kind, value = typed.type, typed.value
    if kind in (HeaderType.BOOL_TRUE, HeaderType.BOOL_FALSE):
        return bytes([kind])
    if kind in _INT_FORMATS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{kind.name} header value must be an int")
        bound = _INT_RANGES[kind]
        if not -bound <= value < bound:
            raise ValueError(f"{value} does not fit a {kind.name} header value")
        return bytes([kind]) + _INT_FORMATS[kind].pack(value)
    if kind in (HeaderType.BYTES, HeaderType.STRING):
        raw = value.encode("utf-8") if isinstance(value, str) else value
        if not isinstance(raw, bytes) or len(raw) > 0xFFFF:
            raise ValueError(f"{kind.name} header value must be at most 65535 bytes")
        return bytes([kind]) + _U16.pack(len(raw)) + raw
    if kind == HeaderType.TIMESTAMP:
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise ValueError("a timestamp header value must be an aware datetime")
        return bytes([kind]) + _I64.pack((value - _EPOCH) // timedelta(milliseconds=1))
    if not isinstance(value, uuid.UUID):
        raise ValueError("a UUID header value must be a uuid.UUID")
    return bytes([kind]) + value.bytes
