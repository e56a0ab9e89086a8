"""DeltaBuilder: stop strings never leak, think tags never leak, and reasoning is split from content."""

from __future__ import annotations

from xinfd_engines.transformers_stream import DeltaBuilder, Piece, prompt_opens_reasoning, to_delta


def feed(builder: DeltaBuilder, chunks: list[str]) -> tuple[str, str, bool]:
    """Push the growing text chunk by chunk (the last push is final); return reasoning, content, stopped."""
    text, reasoning, content = "", "", ""
    piece = Piece()
    for index, chunk in enumerate(chunks):
        text += chunk
        piece = builder.push(text, final=index == len(chunks) - 1)
        reasoning += piece.reasoning
        content += piece.content
        if piece.stopped:
            break
    return reasoning, content, piece.stopped


def test_plain_text_passes_through() -> None:
    assert feed(DeltaBuilder(), ["Hel", "lo", " world"]) == ("", "Hello world", False)


def test_stop_string_spanning_chunks_is_cut_and_never_sent() -> None:
    builder = DeltaBuilder(stop=("END",))
    assert builder.push("abc E").content == "abc "  # "E" could start END: held back
    assert builder.push("abc EN").content == ""
    piece = builder.push("abc ENDxyz")
    assert piece == Piece(content="", stopped=True)
    assert builder.push("abc ENDxyz more").stopped


def test_held_back_prefix_is_released_when_it_is_not_a_stop() -> None:
    assert feed(DeltaBuilder(stop=("END",)), ["a E", "Nx", "!"]) == ("", "a ENx!", False)


def test_half_character_is_held_until_complete() -> None:
    builder = DeltaBuilder()
    assert builder.push("caf\ufffd").content == "caf"
    assert builder.push("café").content == "é"


def test_reasoning_split_when_the_model_opens_the_block() -> None:
    chunks = ["<thi", "nk>", "let me ", "think</th", "ink>\n\n", "Answer."]
    assert feed(DeltaBuilder(parse_reasoning=True), chunks) == ("let me think", "Answer.", False)


def test_reasoning_split_when_the_prompt_opened_the_block() -> None:
    builder = DeltaBuilder(parse_reasoning=True, starts_in_reasoning=True)
    assert feed(builder, ["\nhmm", " ok<", "/think>", "\n\nYes"]) == ("\nhmm ok", "Yes", False)


def test_unfinished_reasoning_is_all_reasoning() -> None:
    builder = DeltaBuilder(parse_reasoning=True, starts_in_reasoning=True)
    assert feed(builder, ["a", "b", "c"]) == ("abc", "", False)


def test_tags_are_text_when_reasoning_parsing_is_off() -> None:
    assert feed(DeltaBuilder(), ["<think>x</think>y"]) == ("", "<think>x</think>y", False)


def test_content_without_think_block_is_content() -> None:
    assert feed(DeltaBuilder(parse_reasoning=True), ["  Hi", " there"]) == ("", "  Hi there", False)


def test_prompt_opens_reasoning() -> None:
    assert prompt_opens_reasoning("<s>assistant:<think>\n")
    assert not prompt_opens_reasoning("<s>assistant:<think>\n\n</think>\n\n")
    assert not prompt_opens_reasoning("<s>assistant:")


def test_to_delta_gives_each_engine_the_same_finish_rules() -> None:
    assert to_delta(Piece(), done=False, natural_stop=False, tokens=1) is None  # nothing new yet
    middle = to_delta(Piece(content="a"), done=False, natural_stop=False, tokens=2)
    assert middle is not None and (middle.text, middle.finish_reason, middle.tokens) == ("a", None, 2)
    stopped = to_delta(Piece(content="b", stopped=True), done=False, natural_stop=False, tokens=3)
    assert stopped is not None and stopped.finish_reason == "stop"  # a stop string, engine still running
    eos = to_delta(Piece(), done=True, natural_stop=True, tokens=4)
    assert eos is not None and eos.finish_reason == "stop"
    out_of_tokens = to_delta(Piece(reasoning="r"), done=True, natural_stop=False, tokens=5)
    assert out_of_tokens is not None and (out_of_tokens.reasoning, out_of_tokens.finish_reason) == ("r", "length")
