"""Turning a growing generated text into deltas: stop strings and the ``<think>`` reasoning split.

Engines decode the tokens generated so far into one text; ``DeltaBuilder.push`` is given that text after each
step and returns only what may be sent now. Two things are held back until they are known:

* a suffix that could be the start of a stop string (a stop string must never leak into the output, even when
  it spans tokens), and a trailing U+FFFD (half of a multi-byte character split across tokens);
* a suffix that could be the start of ``<think>`` / ``</think>``, so a tag is never sent as content.

Reasoning follows vLLM's ``reasoning_content``: text between ``<think>`` and ``</think>`` is reasoning, what
follows is content. A chat template that already opened the block in the prompt (Qwen3 with thinking on, some
templates end the prompt with ``<think>\\n``) starts generation inside reasoning: ``starts_in_reasoning``.

Standard library only: imported by engine plugins that the daemon loads.
"""

from __future__ import annotations

from dataclasses import dataclass

from xinfd.types import GeneratedDelta

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def prompt_opens_reasoning(prompt: str) -> bool:
    """Whether the rendered prompt ends inside an unclosed ``<think>`` block (generation starts reasoning)."""
    opened = prompt.rfind(THINK_OPEN)
    return opened >= 0 and prompt.find(THINK_CLOSE, opened) < 0


def find_stop(text: str, stops: tuple[str, ...], start: int = 0) -> int | None:
    """Index of the earliest stop string found at or after ``start``."""
    found = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(found) if found else None


def partial_suffix(text: str, needles: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of one of ``needles``."""
    longest = 0
    for needle in needles:
        for size in range(min(len(needle) - 1, len(text)), longest, -1):
            if text.endswith(needle[:size]):
                longest = size
                break
    return longest


@dataclass(frozen=True, slots=True)
class Piece:
    """What may be sent after one step: new reasoning, new content, and whether a stop string ended it."""

    reasoning: str = ""
    content: str = ""
    stopped: bool = False


def to_delta(piece: Piece, *, done: bool, natural_stop: bool, tokens: int | None) -> GeneratedDelta | None:
    """What an engine yields for ``piece``: the last delta (with its finish reason) when a stop string matched
    or the engine finished (``done``), a plain delta when there is new text, else nothing.

    ``natural_stop`` says the engine ended on an end-of-sequence token ("stop"); otherwise a finished request
    ran out of tokens ("length"). ``tokens`` is the engine's count so far (``GeneratedDelta.tokens``).
    """
    if piece.stopped or done:
        reason = "stop" if piece.stopped or natural_stop else "length"
        return GeneratedDelta(text=piece.content, reasoning=piece.reasoning, finish_reason=reason, tokens=tokens)
    if piece.content or piece.reasoning:
        return GeneratedDelta(text=piece.content, reasoning=piece.reasoning, tokens=tokens)
    return None


class DeltaBuilder:
    """Incremental splitter for one request (see the module docstring)."""

    def __init__(
        self, *, stop: tuple[str, ...] = (), parse_reasoning: bool = False, starts_in_reasoning: bool = False
    ) -> None:
        self._stop = tuple(s for s in stop if s)
        self._parse = parse_reasoning
        self._open_at_start = parse_reasoning and starts_in_reasoning
        self._sent_reasoning = 0
        self._sent_content = 0
        self.stopped = False

    def push(self, text: str, *, final: bool = False) -> Piece:
        """Given the whole text generated so far, return what is new and safe to send."""
        if self.stopped:
            return Piece(stopped=True)
        hit = find_stop(text, self._stop)
        if hit is not None:
            text, final, self.stopped = text[:hit], True, True
        safe = len(text)
        if not final:
            hold = partial_suffix(text, self._stop)
            if text.endswith("\ufffd"):
                hold = max(hold, 1)
            hold = max(hold, self._tag_hold(text))
            safe -= hold
        reasoning, content = self._split(text[:safe])
        piece = Piece(
            reasoning=reasoning[self._sent_reasoning :],
            content=content[self._sent_content :],
            stopped=self.stopped,
        )
        self._sent_reasoning = max(self._sent_reasoning, len(reasoning))
        self._sent_content = max(self._sent_content, len(content))
        return piece

    def _tag_hold(self, text: str) -> int:
        """How much to hold back so that a half-generated think tag is never sent as text."""
        if not self._parse:
            return 0
        start = self._reasoning_start(text)
        if start is None:
            stripped = text.lstrip()
            # Still possibly the beginning of "<think>" (or only blank so far): hold everything.
            if THINK_OPEN.startswith(stripped):
                return len(text)
            return 0
        if text.find(THINK_CLOSE, start) >= 0:
            return 0
        return partial_suffix(text, (THINK_CLOSE,))

    def _reasoning_start(self, text: str) -> int | None:
        if self._open_at_start:
            return 0
        stripped = text.lstrip()
        if stripped.startswith(THINK_OPEN):
            return len(text) - len(stripped) + len(THINK_OPEN)
        return None

    def _split(self, text: str) -> tuple[str, str]:
        """(reasoning, content) of ``text``; grows monotonically as ``text`` grows, given the hold-backs."""
        if not self._parse:
            return "", text
        start = self._reasoning_start(text)
        if start is None:
            return "", text
        end = text.find(THINK_CLOSE, start)
        if end < 0:
            return text[start:], ""
        # Templates put blank lines after </think>; vLLM's content starts at the first real character too.
        return text[start:end], text[end + len(THINK_CLOSE) :].lstrip("\n")
