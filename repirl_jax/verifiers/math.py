"""Math answers: extract the final answer, compare with the gold one by math-verify.

Final answer = the last \\boxed{...} (nested braces), else GSM8K's `#### n`, else a closing
"the answer is ...". math-verify's own timeouts use signal.alarm, which only works in the main
thread, so they are off here and time limits come from killing pool workers (pool.py)."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass

log = logging.getLogger(__name__)
# math-verify warns once per process that its alarm-based timeouts are off; they are off on purpose.
logging.getLogger("math_verify").setLevel(logging.ERROR)
MAX_ANSWER_CHARS = 1000  # a megabyte "answer" is not an answer; refuse before parsing it
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_HASHES = re.compile(r"####\s*([^\n]+)")
_ANSWER_IS = re.compile(r"answer is\s*:?\s*([^\n]+)", re.IGNORECASE)


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} whose braces balance, else None."""
    for m in reversed(list(_BOXED.finditer(text))):
        depth, start = 1, m.end()
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[start:i]
    return None


def extract_answer(response: str) -> str | None:
    boxed = last_boxed(response)
    if boxed is not None:
        return boxed.strip()
    hashes = _HASHES.findall(response)
    if hashes:
        return hashes[-1].strip()
    said = _ANSWER_IS.findall(response)
    if said:
        return said[-1].strip().strip("$").rstrip(".").strip()
    return None


@dataclass
class Verdict:
    correct: bool
    reason: str  # "" when correct


def _equal(gold: str, answer: str) -> bool:
    from math_verify import parse, verify

    kw = dict(parsing_timeout=None)
    # LaTeX reading first ($-wrapped), then plain text ("18 dollars", "1,000").
    for wrap in (lambda s: f"${s}$", lambda s: s):
        g, a = parse(wrap(gold), **kw), parse(wrap(answer), **kw)
        if g and a and verify(g, a, timeout_seconds=None):
            return True
    return False


def judge_math(response: str, gold: str) -> Verdict:
    answer = extract_answer(response)
    if answer is None:
        return Verdict(False, "no final answer (no \\boxed{}, '####' or 'the answer is')")
    if len(answer) > MAX_ANSWER_CHARS:
        return Verdict(False, f"answer of {len(answer)} chars is over {MAX_ANSWER_CHARS}")
    if _equal(str(gold), answer):
        return Verdict(True, "")
    return Verdict(False, f"answer {answer[:60]!r} != gold {str(gold)[:60]!r}")


def check_math(response: str, gold: str) -> bool:
    """In-process check (no time limit): use check_math_batch for untrusted output at scale."""
    return judge_math(response, gold).correct


def _judge(response, gold):  # module-level: pickled by reference into the pool's workers
    return judge_math(response, gold)


_POOLS: dict[int, "object"] = {}


def verify_math_batch(pairs, timeout_s: float = 5.0, workers: int = 2) -> list[Verdict]:
    """Judges (response, gold) pairs in a process pool; a case that hangs past timeout_s or
    crashes its worker is False with the reason, and the pool carries on."""
    from .pool import Pool

    if workers not in _POOLS:  # workers stay up between batches: spawning costs ~1 s each
        _POOLS[workers] = Pool(_judge, workers, warmup=("\\boxed{1}", "1"))  # math-verify's first parse: seconds
    out = []
    for (ok, res), (resp, gold) in zip(_POOLS[workers].map([(r, g) for r, g in pairs], timeout_s), pairs):
        if not ok:
            log.warning("math check failed (%s) for gold %r", res, str(gold)[:40])
            res = Verdict(False, res)
        out.append(res)
    return out


def check_math_batch(pairs, timeout_s: float = 5.0, workers: int = 2) -> list[bool]:
    return [v.correct for v in verify_math_batch(pairs, timeout_s, workers)]
