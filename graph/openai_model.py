"""ChatOpenAI, sending the conversation past the OpenAI SDK's client-side request transform.

`chat.completions.create` walks the whole request body against the typed-dict union of its parameters
before anything is sent (`openai._utils._transform`), with the event loop held: ~5 ms for a 20-message
conversation on this machine, growing with the history, on every turn's path to the first token. The
messages langchain-openai builds are already plain wire-format dicts, so the walk changes nothing. The
SDK merges `extra_body` into the JSON body after the transform, so the messages go there and the typed
`messages` argument stays an empty placeholder: the same request on the wire, without the walk.
(The workaround known from openai-python perf reports; `tests/test_openai_model.py` checks the bodies.)
"""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import LanguageModelInput
from langchain_openai import ChatOpenAI


class ChatOpenAIFastRequest(ChatOpenAI):
    name: str | None = "ChatOpenAI"  # its runs in LangSmith are named like the stock model's

    def _get_request_payload(self, input_: LanguageModelInput, *, stop: list[str] | None = None,
                             **kwargs: Any) -> dict[str, Any]:
        payload = super()._get_request_payload(input_, stop=stop, **kwargs)
        messages = payload.get("messages")
        if isinstance(messages, list) and all(isinstance(m, dict) for m in messages) \
                and "response_format" not in payload:  # the structured-output path parses locally: keep it typed
            payload["extra_body"] = {**(payload.get("extra_body") or {}), "messages": messages}
            payload["messages"] = []
        return payload
