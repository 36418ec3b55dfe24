"""Text in and out of the server: tokenizing prompts, chat templates, streaming detokenization
and stop strings.

A model without a tokenizer (a preset, random weights) takes prompts as token ids only and
answers with token ids (``text`` is empty); see docs/core/serve.md.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_CHAT_TEMPLATE", "ChatTemplate", "Detokenizer", "StopStrings", "TextCodec"]

# Used when the tokenizer has none: ChatML-like turns, ending with an open assistant turn.
DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


class ChatTemplate:
    """A Hugging Face chat template (Jinja, sandboxed) rendered with ``messages``,
    ``add_generation_prompt`` and the tokenizer's special tokens (``bos_token``, ...)."""

    def __init__(self, source: str, special_tokens: Mapping[str, str] | None = None) -> None:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        self.source = source
        self._template = env.from_string(source)
        self._special = dict(special_tokens or {})

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool) -> str:
        return self._template.render(
            messages=list(messages), add_generation_prompt=add_generation_prompt, **self._special
        )


def _raise(message: str) -> None:
    raise ValueError(message)


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


class TextCodec:
    """A model folder's ``tokens.Tokenizer`` and chat template (``tokenizer_config.json``'s
    ``chat_template``, else :data:`DEFAULT_CHAT_TEMPLATE`)."""

    def __init__(self, tokenizer: Any, folder: str | Path | None = None) -> None:
        self.tokenizer = tokenizer
        config: dict[str, Any] = {}
        cfg_path = Path(folder) / "tokenizer_config.json" if folder is not None else None
        if cfg_path is not None and cfg_path.is_file():
            config = json.loads(cfg_path.read_text(encoding="utf-8"))
        source = config.get("chat_template")
        if isinstance(source, list):  # several named templates: the default one
            source = next((t["template"] for t in source if t.get("name") == "default"), None)
        self.has_own_template = isinstance(source, str)
        template = source if isinstance(source, str) else DEFAULT_CHAT_TEMPLATE
        special = {
            key: text
            for key in ("bos_token", "eos_token", "pad_token", "unk_token")
            if (text := _token_text(config.get(key))) is not None
        }
        self.chat_template = ChatTemplate(template, special)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text).ids)

    def decode(self, token_ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(token_ids)))

    def render_chat(self, messages: Sequence[Mapping[str, Any]]) -> str:
        return self.chat_template.render(messages, add_generation_prompt=True)


class Detokenizer:
    """Text of a growing token sequence, handed out in pieces as tokens arrive. A piece never
    ends inside a multi-byte character (decoding all tokens again avoids cutting one)."""

    def __init__(self, codec: TextCodec | None) -> None:
        self.codec = codec
        self.token_ids: list[int] = []
        self.text = ""

    def add(self, token_ids: Sequence[int], final: bool = False) -> str:
        """The full text so far, after appending ``token_ids``; unless ``final``, without a
        trailing U+FFFD (usually half a character whose next bytes are still to come)."""
        self.token_ids.extend(token_ids)
        if self.codec is not None and (token_ids or final):
            text = self.codec.decode(self.token_ids)
            self.text = text if final else text.rstrip("\ufffd")
        return self.text


class StopStrings:
    """OpenAI ``stop``: the output ends before the first stop string (which is not returned).

    :meth:`feed` takes the full text so far and returns how much of it may be sent now: all of
    it but the last ``len(longest stop) - 1`` characters, which could start a stop string, or,
    once a stop string appeared, the text before it (then :attr:`hit` is True).
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.hit = False
        self._searched = 0

    def feed(self, text: str, final: bool = False) -> int:
        if not self.stops:
            return len(text)
        start = max(0, self._searched - self.hold)
        cut = min((i for s in self.stops if (i := text.find(s, start)) >= 0), default=-1)
        if cut >= 0:
            self.hit = True
            return cut
        self._searched = len(text)
        return len(text) if final else max(0, len(text) - self.hold)
