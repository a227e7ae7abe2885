"""One entry point for the trainer and the evaluator: each problem's rollouts checked by the
verifier of its kind (math answers in the process pool, code in the sandbox), order preserved.
Any verifier failure (timeout, crash, sandbox error) is a wrong answer with its reason."""
from __future__ import annotations

import re

from .code import CodeCase, run_code_batch
from .math import Verdict, verify_math_batch

_FENCE = re.compile(r"```(?:python|py|Python)?[ \t]*\n(.*?)```", re.S)


def extract_code(text: str) -> str:
    """The last fenced code block, or the whole text when there is none."""
    blocks = _FENCE.findall(text)
    return blocks[-1] if blocks else text


def verify(problems, texts, timeout_s: float = 5.0, workers: int = 2) -> list[Verdict]:
    """problems[i] judges texts[i] (pass the same problem object for each of its K rollouts)."""
    out: list[Verdict | None] = [None] * len(texts)
    math_i = [i for i, p in enumerate(problems) if p.kind == "math"]
    code_i = [i for i, p in enumerate(problems) if p.kind == "code"]
    for i, v in zip(math_i, verify_math_batch([(texts[i], problems[i].gold) for i in math_i], timeout_s, workers)):
        out[i] = v
    cases, owners = [], []
    for i in code_i:
        p, prog = problems[i], extract_code(texts[i])
        for stdin, expected in (p.stdio or [(None, None)]):
            cases.append(CodeCase(prog, p.tests or "", stdin, expected))
            owners.append(i)
    for i in code_i:
        out[i] = Verdict(True, "")
    for r, i in zip(run_code_batch(cases, timeout_s, workers) if cases else [], owners):
        if out[i].correct and not r.passed:  # the first failing test case gives the reason
            out[i] = Verdict(False, f"{r.status}: {r.reason}"[:200])
    return out
