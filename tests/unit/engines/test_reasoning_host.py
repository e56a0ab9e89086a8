"""The worker host returns ``GeneratedDelta.reasoning`` as ``reasoning_content`` (vLLM's field), whole and
streamed, counts it in usage, and tells engines the request kind so text completions keep their tags."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from xinfd.types import ChatMessage, GeneratedDelta, GenerateRequest
from xinfd.worker.host import make_worker_app
from xinfd.worker.sse import decode_events


class Thinker:
    """Yields two reasoning pieces, then the answer; records the request kinds it saw."""

    context_window = None

    def __init__(self) -> None:
        self.kinds: list[str] = []

    def render_chat(self, messages: list[ChatMessage], options: Mapping[str, Any]) -> str:
        return messages[-1].content

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GeneratedDelta]:
        self.kinds.append(request.kind)
        yield GeneratedDelta(text="", reasoning="let me ")
        yield GeneratedDelta(text="", reasoning="think")
        yield GeneratedDelta(text="Paris.", finish_reason="stop")


async def test_reasoning_content_whole_and_streamed(aiohttp_client: Any) -> None:
    model = Thinker()
    app = make_worker_app(
        model, model_uid="t", model_name="t", context_length=64, max_tokens_cap=None, replica_label="t-0"
    )
    client = await aiohttp_client(app)
    body = {"messages": [{"role": "user", "content": "capital of France?"}]}
    full = await (await client.post("/v1/chat/completions", json=body)).json()
    message = full["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "Paris.", "reasoning_content": "let me think"}
    assert full["usage"]["completion_tokens"] == 4  # reasoning tokens count as completion tokens
    raw = await (await client.post("/v1/chat/completions", json={**body, "stream": True})).read()
    deltas = [e["choices"][0]["delta"] for e in decode_events(raw) if e != "[DONE]" and e["choices"]]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "let me think"
    assert "".join(d.get("content", "") for d in deltas) == "Paris."
    text = await (await client.post("/v1/completions", json={"prompt": "x"})).json()
    assert text["choices"][0]["text"] == "let me thinkParis."
    assert model.kinds == ["chat", "chat", "completion"]
    assert json.dumps(full)  # plain JSON
