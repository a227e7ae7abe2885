"""Problems -> token ids: the tokenizer's chat template (optional system prompt) or plain text.
Prompts over the length limit are dropped or cut from the left, and counted either way."""
from __future__ import annotations

import dataclasses
import logging

from .records import Problem

log = logging.getLogger(__name__)


def messages(problem: Problem, system: str | None = None) -> list[dict]:
    msgs = list(problem.prompt) if isinstance(problem.prompt, list) else [{"role": "user", "content": problem.prompt}]
    if system and not any(m["role"] == "system" for m in msgs):
        msgs = [{"role": "system", "content": system}] + msgs
    return msgs


def render(problem: Problem, tokenizer=None, system: str | None = None, chat: bool = True) -> str:
    """The prompt text the model sees (chat template with the generation prompt, or plain)."""
    if chat and tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages(problem, system), add_generation_prompt=True, tokenize=False)
    return "\n\n".join(m["content"] for m in messages(problem, system))


@dataclasses.dataclass
class Encoded:
    ids: list[list[int]]
    kept: list[int]  # indices of the problems whose ids these are
    dropped: int = 0  # over max_len and dropped
    truncated: int = 0  # over max_len and cut from the left


def encode(problems: list[Problem], tokenizer, max_len: int, system: str | None = None, chat: bool = True,
           overflow: str = "drop") -> Encoded:
    if overflow not in ("drop", "truncate"):
        raise ValueError(f"overflow={overflow!r}: expected drop | truncate")
    out = Encoded([], [])
    for i, p in enumerate(problems):
        ids = tokenizer(render(p, tokenizer, system, chat), add_special_tokens=False)["input_ids"]
        if len(ids) > max_len:
            if overflow == "drop":
                out.dropped += 1
                continue
            ids, out.truncated = ids[-max_len:], out.truncated + 1
        out.ids.append(ids)
        out.kept.append(i)
    if out.dropped or out.truncated:
        log.warning("prompts over %d tokens: %d dropped, %d truncated (of %d)", max_len, out.dropped, out.truncated,
                    len(problems))
    return out
