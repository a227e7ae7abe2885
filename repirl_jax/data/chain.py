"""The embedded default task: arithmetic chains.

"Start with 7. Multiply by 3, then subtract 4, then add 9. What is the final number?"
The programmatic expert writes one step per line ("7 * 3 = 21") and ends with \\boxed{answer}.
With `modulus` = 10 every value stays one digit ("Work modulo 10"), which a tiny model learns in
minutes on a CPU (the demo). The number of steps is the difficulty knob: a small model learns short chains by imitation, while
long chains give sparse outcome reward, where per-step (process) rewards should matter.
Deterministic from a seed; the train split never contains a test prompt (asserted)."""
from __future__ import annotations

import dataclasses
import random
import re

from .records import INSTRUCTION, Problem

OPS = (("add", "+"), ("subtract", "-"), ("multiply by", "*"))


@dataclasses.dataclass(frozen=True)
class ChainTask:
    min_steps: int = 1
    max_steps: int = 4
    seed: int = 0
    modulus: int = 0  # > 0: every value is taken modulo this (single-digit arithmetic for 10)
    instruction: bool = True  # append the "put your final answer within \\boxed{}" line
    style: str = "words"  # words: "Start with 7. Multiply by 3, ..." | symbols: "7 *3 -4 +9 (mod 10)", lines "7*3=1"

    def __post_init__(self):
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(f"ChainTask: need 1 <= min_steps <= max_steps, got {self.min_steps}, {self.max_steps}")
        if self.style not in ("words", "symbols"):
            raise ValueError(f"ChainTask: style must be words | symbols, got {self.style!r}")
        if self.modulus == 1 or self.modulus < 0:
            raise ValueError(f"ChainTask: modulus must be 0 (off) or >= 2, got {self.modulus}")


def make_problem(rng: random.Random, steps: int, split: str, index: int, modulus: int = 0,
                 instruction: bool = True, style: str = "words") -> Problem:
    m = modulus
    value = rng.randint(0, m - 1) if m else rng.randint(2, 20)
    phrases, lines = [], []
    for _ in range(steps):
        word, sym = rng.choice(OPS)
        x = rng.randint(1, m - 1) if m else rng.randint(2, 5) if sym == "*" else rng.randint(2, 19)
        new = {"+": value + x, "-": value - x, "*": value * x}[sym]
        new = new % m if m else new
        phrases.append(f"{word} {x}" if style == "words" else f"{sym}{x}")
        lines.append(f"{value} {sym} {x} = {new}" if style == "words" else f"{value}{sym}{x}={new}")
        value = new
    start = re.match(r"-?\d+", lines[0]).group()
    if style == "words":
        text = f"Start with {start}. {', then '.join(phrases).capitalize()}."
        text += f" Work modulo {m}. What is the final number?" if m else " What is the final number?"
    else:  # applied left to right
        text = f"{start} {' '.join(phrases)}" + (f" (mod {m})" if m else "")
    return Problem(id=f"chain/{split}/{steps}/{index}", prompt=f"{text}\n{INSTRUCTION}" if instruction else text,
                   gold=str(value),
                   experts=["\n".join(lines) + f"\n\\boxed{{{value}}}"], split=split, source="chain",
                   meta={"steps": steps})


def _generate(task: ChainTask, split: str, n: int, exclude: set[str]) -> list[Problem]:
    rng = random.Random(f"{task.seed}/{split}")
    out, seen, tries = [], set(exclude), 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise ValueError(f"ChainTask: cannot find {n} distinct {split} problems with steps "
                             f"{task.min_steps}..{task.max_steps}; ask for fewer")
        p = make_problem(rng, rng.randint(task.min_steps, task.max_steps), split, len(out), task.modulus,
                         task.instruction, task.style)
        if p.prompt not in seen:
            seen.add(p.prompt)
            out.append(p)
    return out


def splits(task: ChainTask, n_train: int, n_test: int) -> tuple[list[Problem], list[Problem]]:
    """(train, test); the test set is drawn first and no train prompt equals a test prompt."""
    test = _generate(task, "test", n_test, set())
    train = _generate(task, "train", n_train, {p.prompt for p in test})
    assert not {p.prompt for p in train} & {p.prompt for p in test}
    return train, test
