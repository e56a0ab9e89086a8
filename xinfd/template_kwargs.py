"""Validation of a chat request's ``chat_template_kwargs``, the same for every engine and in every process.

The daemon's front end (before it forwards to vLLM or SGLang) and xinfd's worker host (before it renders the
template) both call ``validate_chat_template_kwargs``, so a request is refused the same way whichever engine
serves it. Standard library and ``xinfd.errors`` only: importing this pulls in no server code.

Two rules, both about values that would otherwise be misread silently:

* ``enable_thinking`` must be a JSON boolean. A Jinja template tests it for truth, and the string ``"false"``
  is true there: the thinking a client asked to switch off would stay on.
* Keys that name an argument the engine gives the template itself (``messages``, ``add_generation_prompt``,
  ``bos_token``...) are refused. Passing them along either raises inside the engine ("got multiple values
  for keyword argument") or silently replaces what the engine computed (a different chat template, a
  prompt without the generation prompt).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from xinfd.errors import InvalidRequestError

FIELD = "chat_template_kwargs"
# Keys of chat_template_kwargs whose value must be a JSON boolean.
BOOLEAN_KEYS = frozenset({"enable_thinking"})
# What engines pass to the template or to the renderer themselves: the arguments of transformers'
# ``apply_chat_template`` (also used by mlx-lm and vLLM), the variables llama-cpp-python's
# ``Jinja2ChatFormatter`` renders with, and the template variables of Hugging Face's chat-template
# convention (``bos_token``, ``eos_token``, ``raise_exception``, ``strftime_now``).
RESERVED_KEYS = frozenset({
    "add_generation_prompt",
    "bos_token",
    "chat_template",
    "continue_final_message",
    "conversation",
    "documents",
    "eos_token",
    "function_call",
    "functions",
    "max_length",
    "messages",
    "padding",
    "raise_exception",
    "return_assistant_tokens_mask",
    "return_dict",
    "return_tensors",
    "strftime_now",
    "tokenize",
    "tokenizer_kwargs",
    "tool_choice",
    "tools",
    "truncation",
})


def validate_chat_template_kwargs(body: Mapping[str, Any]) -> dict[str, Any]:
    """The request's ``chat_template_kwargs`` (``{}`` when absent or null), checked.

    :param body: the decoded JSON body of a ``POST /v1/chat/completions`` request.
    :raises InvalidRequestError: (400) naming the field: not an object, a reserved key
        (``chat_template_kwargs.messages``), or a non-boolean ``chat_template_kwargs.enable_thinking``.
    :return: a copy of the kwargs, safe to pass to the template.
    """
    raw = body.get(FIELD)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidRequestError(f"'{FIELD}' must be an object", param=FIELD)
    reserved = sorted(set(raw) & RESERVED_KEYS)
    if reserved:
        raise InvalidRequestError(
            f"'{FIELD}' may not set {', '.join(reserved)}: the engine passes "
            f"{'it' if len(reserved) == 1 else 'them'} to the chat template itself",
            param=f"{FIELD}.{reserved[0]}",
        )
    for key in sorted(BOOLEAN_KEYS & set(raw)):
        value = raw[key]
        if not isinstance(value, bool):
            raise InvalidRequestError(
                f"'{FIELD}.{key}' must be a boolean (true or false), got {value!r}", param=f"{FIELD}.{key}"
            )
    return dict(raw)
