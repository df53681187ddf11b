"""Incremental detokenisation with stop strings, and the TextStream a caller reads."""

from __future__ import annotations

import asyncio
import gc
import threading

import pytest

from sra_rag.generation.streaming import Channel, IncrementalText, TextStream, Update

TEXT = "The ferry log says: café 日本語 🚢 leaves at noon.\nQuestion: who keeps it?"


def pieces_of(tokenizer, text: str, stops: list[str]) -> tuple[list[str], IncrementalText]:
    assembler = IncrementalText(tokenizer, stops)
    pieces = []
    for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
        pieces.append(assembler.push(token))
        if assembler.stopped:
            break
    else:
        pieces.append(assembler.finish())
    return [piece for piece in pieces if piece], assembler


def test_pieces_join_to_the_decoded_text_without_broken_characters(tiny_tokenizer) -> None:
    pieces, assembler = pieces_of(tiny_tokenizer, TEXT, [])
    ids = tiny_tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert "".join(pieces) == assembler.text == tiny_tokenizer.decode(ids) == TEXT
    assert len(pieces) > 10 and not any("\ufffd" in piece for piece in pieces)


@pytest.mark.parametrize("stop", ["\nQuestion:", "日本", "noon.", "é"])
def test_a_stop_string_ends_the_text_and_is_never_emitted(tiny_tokenizer, stop) -> None:
    pieces, assembler = pieces_of(tiny_tokenizer, TEXT, [stop, "never there"])
    assert assembler.stopped
    assert "".join(pieces) == assembler.text == TEXT[: TEXT.index(stop)]
    assert not any(stop in piece for piece in pieces)


def test_text_that_may_begin_a_stop_string_is_held_back(tiny_tokenizer) -> None:
    assembler = IncrementalText(tiny_tokenizer, ["ferry boat"])
    released = "".join(
        assembler.push(token) for token in tiny_tokenizer("The ferry", add_special_tokens=False)["input_ids"]
    )
    assert released == "The "  # "ferry" may begin the stop string
    assert released + assembler.finish() == "The ferry"  # the generation ended: it is released


def stream_with(*updates: Update) -> tuple[TextStream, Channel]:
    channel = Channel()
    for update in updates:
        channel.put(update)
    return TextStream(3, channel), channel


def test_the_counters_follow_what_was_read() -> None:
    stream, _ = stream_with(
        Update("Hel", [1, 2], prefill_seconds=0.5), Update("", [3]), Update("lo", [4], finish_reason="length")
    )
    assert stream.completion_tokens == 0 and stream.prefill_seconds is None
    assert next(stream) == "Hel" and (stream.completion_tokens, stream.prefill_seconds) == (2, 0.5)
    assert list(stream) == ["lo"]
    assert (stream.text, stream.token_ids, stream.finish_reason, stream.done) == ("Hello", [1, 2, 3, 4], "length", True)


def test_an_error_is_raised_where_the_reader_reaches_it() -> None:
    stream, _ = stream_with(Update("a", [1]), Update(error=RuntimeError("boom")))
    assert next(stream) == "a"
    with pytest.raises(RuntimeError, match="boom"):
        next(stream)
    assert list(stream) == []


def test_close_cancels_once_and_ends_iteration() -> None:
    stream, channel = stream_with(Update("a", [1]))
    with stream:
        assert next(stream) == "a"
    assert channel.cancelled and stream.finish_reason == "cancelled" and list(stream) == []
    stream.close()  # idempotent


def test_dropping_a_stream_cancels_its_request() -> None:
    stream, channel = stream_with()
    del stream
    gc.collect()
    assert channel.cancelled


def test_a_blocked_reader_is_woken_by_updates_from_another_thread() -> None:
    stream, channel = stream_with()
    threading.Timer(0.05, channel.put, [Update("late", [7], finish_reason="stop")]).start()
    assert list(stream) == ["late"]


def test_async_reading_without_a_thread_per_stream() -> None:
    stream, channel = stream_with(Update("a", [1]))

    async def main() -> list[str]:
        asyncio.get_running_loop().call_later(0.05, channel.put, Update("b", [2], finish_reason="stop"))
        return [piece async for piece in stream]

    before = threading.active_count()
    assert asyncio.run(main()) == ["a", "b"]
    assert threading.active_count() == before and stream.finish_reason == "stop"
