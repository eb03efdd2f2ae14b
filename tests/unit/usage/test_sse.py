"""SseSplitter: complete events out of arbitrarily cut chunks, every byte accounted for."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from extproc.usage.sse import SseEvent, SseSplitter


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` cut at the given offsets (any order, duplicates allowed: empty chunks)."""
    bounds = [0, *sorted(cuts), len(data)]
    return [data[start:end] for start, end in itertools.pairwise(bounds)]


def split_all(chunks: list[bytes], max_pending: int = 1 << 20) -> tuple[list[SseEvent], SseSplitter]:
    splitter = SseSplitter(max_pending)
    events: list[SseEvent] = []
    for chunk in chunks:
        events += splitter.feed(chunk)
    events += splitter.flush()
    return events, splitter


def test_feed_returns_only_complete_events_and_keeps_the_tail() -> None:
    splitter = SseSplitter()
    assert splitter.feed(b"data: one\n\ndata: tw") == [SseEvent(raw=b"data: one\n\n", data=b"one")]
    assert splitter.feed(b"o\n") == []
    assert splitter.feed(b"\n") == [SseEvent(raw=b"data: two\n\n", data=b"two")]


def test_every_blank_line_form_ends_an_event() -> None:
    for ending in (b"\n\n", b"\r\n\r\n", b"\r\r"):
        stream = b"data: a" + ending + b"data: b" + ending
        events, _ = split_all([stream])
        assert [event.data for event in events] == [b"a", b"b"], ending
        assert b"".join(event.raw for event in events) == stream


def test_mixed_line_endings_inside_one_event() -> None:
    events, _ = split_all([b"event: x\rdata: 1\r\ndata: 2\n\r\n"])
    assert events == [SseEvent(raw=b"event: x\rdata: 1\r\ndata: 2\n\r\n", data=b"1\n2", event="x")]


def test_a_cr_ending_a_chunk_waits_to_see_whether_an_lf_follows() -> None:
    splitter = SseSplitter()
    assert splitter.feed(b"data: a\r\n\r") == []
    # The LF belongs to this event's blank line, not to the start of the next event.
    assert splitter.feed(b"\ndata: b\r\n\r\n") == [
        SseEvent(raw=b"data: a\r\n\r\n", data=b"a"),
        SseEvent(raw=b"data: b\r\n\r\n", data=b"b"),
    ]


def test_a_lone_cr_at_end_of_stream_still_ends_the_event() -> None:
    splitter = SseSplitter()
    assert splitter.feed(b"data: a\r\r") == []
    assert splitter.flush() == [SseEvent(raw=b"data: a\r\r", data=b"a")]


def test_data_lines_join_with_lf_and_lose_only_one_leading_space() -> None:
    events, _ = split_all([b"data: one\ndata:two\ndata:  three\ndata\ndata: \n\n"])
    assert events[0].data == b"one\ntwo\n three\n\n"


def test_comments_ids_retries_and_unknown_fields_are_ignored() -> None:
    events, _ = split_all([b": keep-alive\nid: 7\nretry: 10\nfoo: bar\ndata: x\n\n"])
    assert events[0].data == b"x"
    assert events[0].event is None


def test_event_field_names_the_type() -> None:
    events, _ = split_all([b"event: message_start\ndata: {}\n\nevent:\ndata: {}\n\n"])
    assert [event.event for event in events] == ["message_start", None]


def test_a_comment_only_event_has_no_data() -> None:
    events, _ = split_all([b": ping\n\n"])
    assert events == [SseEvent(raw=b": ping\n\n", data=b"")]


def test_stray_blank_lines_come_out_as_empty_events_so_no_byte_is_lost() -> None:
    stream = b"\ndata: a\n\n\n\ndata: b\n\n"
    events, _ = split_all([stream])
    assert [event.data for event in events if event.data] == [b"a", b"b"]
    assert b"".join(event.raw for event in events) == stream


def test_a_leading_utf8_bom_is_not_part_of_the_first_field_name() -> None:
    events, _ = split_all([b"\xef\xbb\xbfdata: a\n\ndata: b\n\n"])
    assert [event.data for event in events] == [b"a", b"b"]
    assert events[0].raw.startswith(b"\xef\xbb\xbf")


def test_flush_returns_a_final_event_without_its_blank_line() -> None:
    splitter = SseSplitter()
    assert splitter.feed(b"data: a\n\ndata: [DONE]\n") == [SseEvent(raw=b"data: a\n\n", data=b"a")]
    assert splitter.flush() == [SseEvent(raw=b"data: [DONE]\n", data=b"[DONE]")]


def test_flush_counts_a_last_line_without_a_line_ending() -> None:
    splitter = SseSplitter()
    splitter.feed(b"data: [DO")
    assert splitter.flush() == [SseEvent(raw=b"data: [DO", data=b"[DO")]
    assert splitter.flush() == []


def test_a_multibyte_character_split_across_chunks_is_reassembled() -> None:
    stream = 'data: {"c":"日本🎉"}\n\n'.encode()
    cut = stream.index("🎉".encode()) + 2
    events, _ = split_all([stream[:cut], stream[cut:]])
    assert events[0].data.decode() == '{"c":"日本🎉"}'


def test_an_overflowing_tail_is_handed_out_unparsed_and_parsing_resumes() -> None:
    splitter = SseSplitter(max_pending=16)
    out = splitter.feed(b"data: " + b"x" * 20)
    assert splitter.overflowed
    assert [event.oversized for event in out] == [True]
    # Nothing of the oversized event is kept, however much more of it arrives.
    out += splitter.feed(b"y" * 100)
    assert splitter._buf == bytearray()
    out += splitter.feed(b"\n\ndata: ok\n\n")
    out += splitter.flush()
    assert b"".join(event.raw for event in out) == b"data: " + b"x" * 20 + b"y" * 100 + b"\n\ndata: ok\n\n"
    assert [event.data for event in out if not event.oversized] == [b"ok"]
    assert splitter.unparsed_bytes == len(b"data: " + b"x" * 20 + b"y" * 100 + b"\n\n")


def test_an_overflow_cut_right_after_a_line_ending_still_finds_the_blank_line() -> None:
    splitter = SseSplitter(max_pending=8)
    out = splitter.feed(b"data: 0123456789\n")
    assert splitter.overflowed
    out += splitter.feed(b"\ndata: ok\n\n")
    assert [event.data for event in out if not event.oversized] == [b"ok"]


def test_the_buffer_stays_bounded_by_the_cap_on_a_body_that_is_not_sse() -> None:
    splitter = SseSplitter(max_pending=1 << 20)
    handed_out = 0
    for _ in range(48):
        handed_out += sum(len(event.raw) for event in splitter.feed(b"z" * 65536))
        assert len(splitter._buf) <= (1 << 20) + 65536
    handed_out += sum(len(event.raw) for event in splitter.flush())
    assert handed_out == 48 * 65536
    assert splitter.overflowed


def test_a_large_event_completed_within_one_chunk_is_not_an_overflow() -> None:
    events, splitter = split_all([b"data: " + b"x" * 100 + b"\n\n"], max_pending=16)
    assert not splitter.overflowed
    assert events[0].data == b"x" * 100


# A generated stream: events of field lines, each line and blank line with its own ending.
_LINE_ENDINGS = st.sampled_from([b"\n", b"\r\n", b"\r"])
_VALUE = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]), max_size=12)


@st.composite
def sse_streams(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """(stream bytes, the data each event should yield), the last blank line maybe cut off."""
    stream = bytearray()
    expected: list[bytes] = []
    previous_ending = b""
    for _ in range(draw(st.integers(0, 6))):
        data: list[bytes] = []
        for _ in range(draw(st.integers(1, 4))):
            kind = draw(st.sampled_from(["data", "data", "event", "comment", "id"]))
            value = draw(_VALUE).encode()
            if kind == "data":
                data.append(value)
                stream += b"data: " + value
            elif kind == "comment":
                stream += b":" + value
            else:
                stream += kind.encode() + b": " + value
            previous_ending = _ending(draw, previous_ending)
            stream += previous_ending
        previous_ending = _ending(draw, previous_ending)
        stream += previous_ending
        expected.append(b"\n".join(data))
    if expected and draw(st.booleans()):
        # A stream cut off before its last blank line: flush still yields the event.
        stream = stream[: -len(previous_ending)]
    return bytes(stream), expected


def _ending(draw: st.DrawFn, previous: bytes) -> bytes:
    ending = draw(_LINE_ENDINGS)
    # A CR then an LF is one CRLF, not two line endings: the generator must not mean two.
    return b"\r\n" if previous == b"\r" and ending == b"\n" else ending


@given(sse_streams(), st.lists(st.integers(0, 10_000), max_size=20))
def test_any_chunking_yields_the_same_events_and_every_byte(
    generated: tuple[bytes, list[bytes]], cuts: list[int]
) -> None:
    stream, expected = generated
    whole, _ = split_all([stream])
    pieces, _ = split_all(split_at(stream, [cut % (len(stream) + 1) for cut in cuts]))
    assert pieces == whole
    assert b"".join(event.raw for event in pieces) == stream
    assert [event.data for event in pieces] == expected


@given(st.lists(st.binary(max_size=64), max_size=20), st.integers(1, 64))
def test_arbitrary_bytes_never_raise_and_no_byte_is_lost(chunks: list[bytes], max_pending: int) -> None:
    events, _ = split_all(chunks, max_pending=max_pending)
    assert b"".join(event.raw for event in events) == b"".join(chunks)
