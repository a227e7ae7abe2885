"""The embedded default task: arithmetic chains.

"Start with 7. Multiply by 3, then subtract 4, then add 9. What is the final number?"
The programmatic expert writes one step per line ("7 * 3 = 21") and ends with \\boxed{answer}.
With `modulus` = 10 every value stays one digit ("Work modulo 10"), which a tiny model learns in
minutes on a CPU (the demo). The number of steps is the difficulty knob: a small model learns short chains by imitation, while
long chains give sparse outcome reward, where per-step (process) rewards should matter.
Deterministic from a seed; the train split never contains a test prompt (asserted).

Where process matters (the demo's testbed): `modulus=100, operand_max=9` gives two-digit values
and single-digit operands ("47 +8 *3 (mod 100)" -> "47+8=55", "55*3=65"); multipliers are drawn
coprime to the modulus (3, 7, 9), so every step is a bijection mod 100: one slipped step always
makes the final answer wrong, and a guess is right about 1 time in 100, so a correct outcome
implies a correct process (measured in the demo report). The multiplications matter too: with
only + and - the answer is start + a signed sum of the operands, which a small model learns to
write from the prompt without the steps (seen: most of its correct answers had wrong steps).
The same shortcut works on every run of + / - steps: from the last value it wrote right, a
width-128 model adds the run's operands and lands on the right answer past wrong lines (a
"lucky" answer: 32% of its correct samples with runs allowed, 2.7% on chains without two
+ / - steps in a row). `additive_run=1` generates only such chains.

Noisy demonstrations (`slip_rate`): each + / - line of the expert solution slips its sign with that
probability ("47+8=39"), the solution going on from the slipped value; the prompt, gold answer and
exact labels stay those of the correct solution. An imitation start trained on them has a habit
(a coin per + / - line) rather than a missing fact: something outcome RL can remove and a PRM that
learns where the slip sits can remove faster.

Harmless phrasing (`filler_rate`): expert lines start with a filler word ("so 47+8=55") at random.
A start that imitates it is unsure of tokens that do not decide the outcome, as a real model is of its
wording: outcome RL's credit for a whole rollout lands on them as noise, a PRM's credit need not.

Exact step labels: `step_labels(problem, response)` compares each response line with the
expert's line at that index; a line is on the correct path when it and every line before it
match (the final `\\boxed{}` line is the last step)."""
from __future__ import annotations

import dataclasses
import math
import random
import re

from .records import INSTRUCTION, Problem

MULTIPLY = ("multiply by", "*")
OPS = (("add", "+"), ("subtract", "-"), MULTIPLY)
FILLERS = ("so", "then", "now", "next")
_FILLER = re.compile(rf"^\s*(?:{'|'.join(FILLERS)})\b")


@dataclasses.dataclass(frozen=True)
class ChainTask:
    min_steps: int = 1
    max_steps: int = 4
    seed: int = 0
    modulus: int = 0  # > 0: every value is taken modulo this (single-digit arithmetic for 10)
    instruction: bool = True  # append the "put your final answer within \\boxed{}" line
    style: str = "words"  # words: "Start with 7. Multiply by 3, ..." | symbols: "7 *3 -4 +9 (mod 10)", lines "7*3=1"
    ops: str = "+-*"  # the operations drawn from (a subset of "+-*")
    operand_max: int = 0  # > 0: operands drawn from 1..operand_max; 0: 1..modulus-1 (or the integer rules)
    additive_run: int = 0  # > 0: at most this many + / - steps in a row (then a multiplication); 0: no limit
    # > 0: noisy demonstrations (a habit to unlearn): each + / - line of the expert solution is written
    # with its sign slipped (a + x computed as a - x and vice versa) with this probability, the solution
    # going on from the slipped value; prompts, gold and the exact labels (meta["lines"]) are unchanged
    slip_rate: float = 0.0
    # > 0: harmless phrasing: each line of the expert solution but the \boxed one starts with a filler
    # word (FILLERS, uniform) with this probability. A policy imitating it is unsure of tokens that do not
    # decide the outcome, as a real model is of its wording; the exact labels ignore a leading filler
    filler_rate: float = 0.0

    def __post_init__(self):
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(f"ChainTask: need 1 <= min_steps <= max_steps, got {self.min_steps}, {self.max_steps}")
        if self.style not in ("words", "symbols"):
            raise ValueError(f"ChainTask: style must be words | symbols, got {self.style!r}")
        if self.modulus == 1 or self.modulus < 0:
            raise ValueError(f"ChainTask: modulus must be 0 (off) or >= 2, got {self.modulus}")
        if not self.ops or set(self.ops) - set("+-*") or len(set(self.ops)) != len(self.ops):
            raise ValueError(f"ChainTask: ops must be distinct characters of '+-*', got {self.ops!r}")
        if self.operand_max < 0 or (self.modulus and self.operand_max >= self.modulus):
            raise ValueError(f"ChainTask: operand_max must be 0 (default) or in 1..modulus-1, got {self.operand_max}")
        if ("*" in self.ops and self.modulus and self.operand_max
                and not any(math.gcd(k, self.modulus) == 1 for k in range(2, self.operand_max + 1))):
            raise ValueError(f"ChainTask: ops has '*' but no multiplier in 2..operand_max={self.operand_max} is "
                             f"coprime to modulus={self.modulus}")
        if self.additive_run < 0 or (self.additive_run and "*" not in self.ops):
            raise ValueError(f"ChainTask: additive_run={self.additive_run} needs ops with '*' (a run of + / - "
                             f"steps ends in a multiplication) and must be >= 0; ops={self.ops!r}")
        if not 0 <= self.slip_rate <= 1 or (self.slip_rate and not set(self.ops) & set("+-")):
            raise ValueError(f"ChainTask: slip_rate={self.slip_rate} must be in [0, 1] and needs '+' or '-' in "
                             f"ops={self.ops!r} (only + / - lines slip)")
        if not 0 <= self.filler_rate <= 1:
            raise ValueError(f"ChainTask: filler_rate={self.filler_rate} must be in [0, 1]")


def make_problem(rng: random.Random, steps: int, split: str, index: int, modulus: int = 0,
                 instruction: bool = True, style: str = "words", ops: str = "+-*", operand_max: int = 0,
                 additive_run: int = 0, slip_rate: float = 0.0, slip_rng: random.Random | None = None,
                 filler_rate: float = 0.0, filler_rng: random.Random | None = None) -> Problem:
    """One chain problem; with `slip_rate`, its expert solution is a noisy demonstration drawn with
    `slip_rng`, with `filler_rate` its lines' fillers drawn with `filler_rng` (streams apart from `rng`,
    so the problems are those of slip_rate=0 and filler_rate=0)."""
    m = modulus
    value = rng.randint(0, m - 1) if m else rng.randint(2, 20)
    phrases, lines, written = [], [], []
    shown = value  # the value the (possibly slipped) expert solution carries
    choices = [o for o in OPS if o[1] in ops]
    run = 0  # + / - steps in a row so far
    for _ in range(steps):
        word, sym = MULTIPLY if additive_run and run >= additive_run else rng.choice(choices)
        run = 0 if sym == "*" else run + 1
        if operand_max and sym == "*" and m:  # multipliers coprime to m: every step is a bijection
            x = rng.choice([k for k in range(2, operand_max + 1) if math.gcd(k, m) == 1])
        elif operand_max:
            x = rng.randint(1, operand_max)
        else:
            x = rng.randint(1, m - 1) if m else rng.randint(2, 5) if sym == "*" else rng.randint(2, 19)
        phrases.append(f"{word} {x}" if style == "words" else f"{sym}{x}")
        new = _apply(value, sym, x, m)
        lines.append(_line(value, sym, x, new, style))
        slip = slip_rate and sym in "+-" and slip_rng.random() < slip_rate
        new_shown = _apply(shown, {"+": "-", "-": "+"}[sym] if slip else sym, x, m)
        filler = f"{filler_rng.choice(FILLERS)} " if filler_rate and filler_rng.random() < filler_rate else ""
        written.append(filler + _line(shown, sym, x, new_shown, style))
        value, shown = new, new_shown
    start = re.match(r"-?\d+", lines[0]).group()
    if style == "words":
        text = f"Start with {start}. {', then '.join(phrases).capitalize()}."
        text += f" Work modulo {m}. What is the final number?" if m else " What is the final number?"
    else:  # applied left to right
        text = f"{start} {' '.join(phrases)}" + (f" (mod {m})" if m else "")
    lines.append(f"\\boxed{{{value}}}")
    written.append(f"\\boxed{{{shown}}}")
    return Problem(id=f"chain/{split}/{steps}/{index}", prompt=f"{text}\n{INSTRUCTION}" if instruction else text,
                   gold=str(value), experts=["\n".join(written)], split=split, source="chain",
                   meta={"steps": steps, "lines": lines, "modulus": m})


def _apply(value: int, sym: str, x: int, m: int) -> int:
    new = {"+": value + x, "-": value - x, "*": value * x}[sym]
    return new % m if m else new


def _line(value: int, sym: str, x: int, new: int, style: str) -> str:
    return f"{value} {sym} {x} = {new}" if style == "words" else f"{value}{sym}{x}={new}"


def _generate(task: ChainTask, split: str, n: int, exclude: set[str]) -> list[Problem]:
    rng, slip_rng = random.Random(f"{task.seed}/{split}"), random.Random(f"{task.seed}/{split}/slips")
    filler_rng = random.Random(f"{task.seed}/{split}/fillers")
    out, seen, tries = [], set(exclude), 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise ValueError(f"ChainTask: cannot find {n} distinct {split} problems with steps "
                             f"{task.min_steps}..{task.max_steps}; ask for fewer")
        p = make_problem(rng, rng.randint(task.min_steps, task.max_steps), split, len(out), task.modulus,
                         task.instruction, task.style, task.ops, task.operand_max, task.additive_run,
                         task.slip_rate, slip_rng, task.filler_rate, filler_rng)
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


@dataclasses.dataclass(frozen=True)
class StepLabels:
    """Exact labels of one response. Steps are the response's lines (split at "\\n", a trailing
    empty piece dropped); `ok[i]`: step i is on the correct path (it and every earlier step equal
    the expert's steps, spaces ignored); `first_wrong`: the first i with not ok[i], or the index
    one past the last step when every step is right but the solution stops early; None when the
    response is exactly the expert's solution (extra lines after it are wrong steps)."""

    lines: list[str]
    ok: list[bool]
    first_wrong: int | None


def _norm(line: str) -> str:
    """A line as the labels compare it: a leading filler word (FILLERS) and all spaces dropped."""
    return re.sub(r"\s+", "", _FILLER.sub("", line))


def response_lines(response: str) -> list[str]:
    """The steps of a response: its lines, a trailing empty piece (a final newline) dropped."""
    lines = response.split("\n")
    return lines[:-1] if len(lines) > 1 and not lines[-1].strip() else lines


_STEP = re.compile(r"^(\d+)([+\-*])(\d+)=(\d+)$")
ERROR_KINDS = ("correct", "slip", "arithmetic", "copy", "answer", "length")


def error_kind(problem: Problem, lab: StepLabels) -> str:
    """What the first wrong step of a response is (ERROR_KINDS), from its labels `lab` =
    step_labels(problem, response): `slip`, the result of the other sign on a + / - line (the habit of
    noisy demonstrations, `slip_rate`: a choice RL can drop); `arithmetic`, another wrong result of the
    right a, op and x (a skill the policy lacks); `copy`, a line whose a, op or x is not the expected
    one (or not a step line); `answer`, right steps and a wrong final line; `length`, right lines that
    stop early or go on; `correct`, the expert's solution."""
    if lab.first_wrong is None:
        return "correct"
    i, want = lab.first_wrong, problem.meta["lines"]
    if i >= min(len(want), len(lab.lines)):
        return "length"
    ref, got = _STEP.match(_norm(want[i])), _STEP.match(_norm(lab.lines[i]))
    if ref is None:  # the \boxed line
        return "answer"
    if got is None or got.group(1, 2, 3) != ref.group(1, 2, 3):
        return "copy"
    a, op, x = int(ref.group(1)), ref.group(2), int(ref.group(3))
    other = _apply(a, {"+": "-", "-": "+"}[op], x, problem.meta.get("modulus", 0)) if op in "+-" else None
    return "slip" if int(got.group(4)) == other else "arithmetic"


def step_labels(problem: Problem, response: str) -> StepLabels:
    """Exact step labels of `response` to a chain problem (see StepLabels)."""
    want = problem.meta.get("lines") if problem.source == "chain" else None
    if not want:
        raise ValueError(f"step_labels: problem {problem.id!r} (source {problem.source!r}) has no exact step "
                         "labels; only chain-task problems do")
    lines = response_lines(response)
    ok, good = [], True
    for i, line in enumerate(lines):
        good = good and i < len(want) and _norm(line) == _norm(want[i])
        ok.append(good)
    if not all(ok):
        first = ok.index(False)
    else:
        first = None if len(lines) == len(want) else len(lines)
    return StepLabels(lines, ok, first)
