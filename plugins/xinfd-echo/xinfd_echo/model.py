"""The echo model object: what ``EchoEngine.load`` returns and the worker host serves.

It implements ``xinfd.types.TextModel`` (``context_window``, ``render_chat``, ``count_tokens``, ``generate``)
and nothing else: the worker host does HTTP, streaming, request ids and cancellation. It is deterministic, so
daemon tests can assert exact outputs: a chat echoes the last user message, a completion echoes the prompt, a
token at a time.

Its launch options (``xinfd_echo.options``) make it useful for fault tests too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
from collections.abc import AsyncGenerator, Mapping
from typing import Any

from xinfd.types import ChatMessage, GeneratedDelta, GenerateRequest, TokenLogprob
from xinfd_echo.options import EchoOptions

__all__ = ["EchoModel", "EchoOptions", "tokenize"]

log = logging.getLogger(__name__)

# A token is a run of non-space characters plus the whitespace after it; the first token also takes any
# leading whitespace. Joining the tokens gives back the text exactly, so an echo is byte-for-byte faithful.
_TOKEN_RE = re.compile(r"\s*\S+\s*")
CRASH_EXIT_CODE = 17
_CRASH_GRACE_S = 0.05  # lets the host finish writing the response that reached the limit


def tokenize(text: str) -> list[str]:
    """Split ``text`` into echo tokens; whitespace-only text is one token, empty text none."""
    tokens = _TOKEN_RE.findall(text)
    if not tokens and text:
        return [text]
    return tokens


class EchoModel:
    """Streams the prompt back, one token per delta."""

    # The context the loaded engine really has, when smaller than the family's context_length (llama.cpp's
    # n_ctx); None: the family's. The worker host checks prompts and max_tokens against it.
    context_window: int | None = None

    def __init__(self, options: EchoOptions | None = None) -> None:
        self.options = options or EchoOptions()
        self.served = 0  # requests whose generation has ended (for crash_after)
        # Kept referenced so it is neither reaped nor reported; the daemon's process-group kill ends it.
        self.grandchild: subprocess.Popen[bytes] | None = None

    @classmethod
    def load(cls, options: EchoOptions) -> EchoModel:
        """Do what loading means for echo: apply the fault-injection options that act at start."""
        if options.fail_load is not None:
            raise RuntimeError(options.fail_load)
        model = cls(options)
        if options.ignore_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            log.info("echo: ignoring SIGTERM (ignore_sigterm)")
        if options.fork_grandchild:
            model.grandchild = subprocess.Popen(
                ["sleep", "3600"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            log.info("echo: started grandchild process %d (fork_grandchild)", model.grandchild.pid)
        return model

    def render_chat(self, messages: list[ChatMessage], options: Mapping[str, Any]) -> str:
        """The "chat template" of echo: the last user message; system and assistant turns are ignored."""
        for message in reversed(messages):
            if message.role == "user":
                return message.content
        return ""

    def count_tokens(self, text: str) -> int:
        return len(tokenize(text))

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[GeneratedDelta, None]:
        """Yield the prompt's tokens, at most ``max_tokens``, ending early at a stop string.

        Text that could be the start of a stop string is held back until it is known not to be one, so a
        stop string never leaks into the output even when it spans tokens. Closing the iterator (the client
        went away) stops at the current ``await``; a real engine would free the sequence's slot in a
        ``finally``.
        """
        try:
            if self.options.prefill_delay:
                await asyncio.sleep(self.options.prefill_delay)
            tokens = tokenize(request.prompt)
            budget = tokens[: request.max_tokens]
            natural_end = "stop" if len(budget) == len(tokens) else "length"
            if not budget:
                yield GeneratedDelta(text="", finish_reason=natural_end)
                return
            text = ""  # everything generated so far
            sent = 0  # how much of it has been yielded
            ends: list[int] = []  # where each generated token ends in ``text``
            for index, token in enumerate(budget):
                if index:
                    await asyncio.sleep(self.options.delay)
                text += token
                ends.append(len(text))
                hit = _find_stop(text, request.stop, start=sent)
                if hit is not None:
                    logprobs = fake_logprobs(text, ends, sent, hit, request.logprobs, final=True)
                    yield GeneratedDelta(text=text[sent:hit], finish_reason="stop", logprobs=logprobs)
                    return
                if index == len(budget) - 1:
                    logprobs = fake_logprobs(text, ends, sent, len(text), request.logprobs, final=True)
                    yield GeneratedDelta(text=text[sent:], finish_reason=natural_end, logprobs=logprobs)
                    return
                safe = len(text) - _stop_prefix_length(text, request.stop)
                if safe > sent:
                    logprobs = fake_logprobs(text, ends, sent, safe, request.logprobs)
                    yield GeneratedDelta(text=text[sent:safe], logprobs=logprobs)
                    sent = safe
        finally:
            self._request_ended()

    def _request_ended(self) -> None:
        self.served += 1
        limit = self.options.crash_after
        if limit is not None and self.served == limit:
            log.warning("echo: served %d request(s), exiting with %d (crash_after)", limit, CRASH_EXIT_CODE)
            try:
                asyncio.get_running_loop().call_later(_CRASH_GRACE_S, os._exit, CRASH_EXIT_CODE)
            except RuntimeError:  # no loop (iterator finalised outside one): crash now
                os._exit(CRASH_EXIT_CODE)


def fake_logprobs(
    text: str, ends: list[int], sent: int, upto: int, top: int | None, *, final: bool = False
) -> tuple[TokenLogprob, ...]:
    """Deterministic, made-up log probabilities (echo has no model: these are NOT real probabilities) for the
    tokens that end in ``text[sent:upto]``, so tests can check the host's logprobs shapes exactly.

    A token of ``n`` characters gets ``-n / 100``; its alternatives are itself, then ``"<alt1>"``,
    ``"<alt2>"``... each one nat less likely. In the ``final`` delta a token cut by a stop string is reported as
    the part that was sent. Empty when ``top`` is ``None`` (not asked).
    """
    if top is None:
        return ()
    found = []
    for index, end in enumerate(ends):
        start = ends[index - 1] if index else 0
        if end <= sent or start >= upto or (end > upto and not final):
            continue
        piece = text[start:min(end, upto)]
        logprob = -len(piece) / 100
        alternatives = [(piece, logprob)] + [(f"<alt{j}>", logprob - j) for j in range(1, top)]
        found.append(TokenLogprob(token=piece, logprob=logprob, top=tuple(alternatives[:top])))
    return tuple(found)


def _find_stop(text: str, stops: tuple[str, ...], *, start: int) -> int | None:
    """Index of the earliest stop string in ``text[start:]``; earlier text was already checked."""
    found = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(found) if found else None


def _stop_prefix_length(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string (to hold back)."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest
