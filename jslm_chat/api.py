"""The named API endpoints ``/chat`` (streaming) and ``/prompt`` (no generation).

(No ``from __future__ import annotations`` here: ``gr.api`` reads the return annotations as
objects to type the endpoints.)

Both take the same inputs; defaults come from the model preset. Errors come back as
``gr.Error`` with a Japanese + English message, and the server keeps serving.
"""

from collections.abc import Iterator
from typing import Any

import gradio as gr

from .chat import USER_ERRORS, ChatRequest, ChatService
from .gpu import stream_on_gpu


def register_api(service: ChatService) -> None:
    """Add ``/chat`` and ``/prompt`` to the Blocks being built."""
    preset = service.engine.preset
    defaults = preset.sampling

    def chat(
        message: str,
        history: list[dict[str, Any]] | None = None,
        system_prompt: str = preset.system_prompt,
        max_new_tokens: int = defaults.max_new_tokens,
        temperature: float = defaults.temperature,
        top_p: float = defaults.top_p,
        top_k: int = defaults.top_k,
        repetition_penalty: float = defaults.repetition_penalty,
        seed: int | None = None,
    ) -> Iterator[str]:
        """Stream the growing reply to `message`, after the earlier `history` ({role, content} dicts)."""
        request = ChatRequest.from_values(
            message, history, system_prompt, max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed
        )
        try:
            for item in service.run(service.reply(request), stream_on_gpu):
                if isinstance(item, str):
                    yield item
        except USER_ERRORS as error:
            raise gr.Error(str(error)) from error

    def prompt(
        message: str,
        history: list[dict[str, Any]] | None = None,
        system_prompt: str = preset.system_prompt,
        max_new_tokens: int = defaults.max_new_tokens,
        temperature: float = defaults.temperature,
        top_p: float = defaults.top_p,
        top_k: int = defaults.top_k,
        repetition_penalty: float = defaults.repetition_penalty,
        seed: int | None = None,
    ) -> dict[str, Any]:
        """The exact prompt the model would see for these inputs: text, token ids, count, turns left out."""
        request = ChatRequest.from_values(
            message, history, system_prompt, max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed
        )
        try:
            rendered = service.prompt(request)
        except USER_ERRORS as error:
            raise gr.Error(str(error)) from error
        return {
            "prompt": rendered.text,
            "token_ids": rendered.token_ids,
            "num_tokens": rendered.num_tokens,
            "dropped_turns": rendered.dropped_turns,
        }

    gr.api(chat, api_name="chat", concurrency_limit=None)
    gr.api(prompt, api_name="prompt", concurrency_limit=None)
