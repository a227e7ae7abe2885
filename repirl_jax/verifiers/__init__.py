"""Host-side verifiers: math answers (process pool with timeouts) and code (bubblewrap sandbox).
Whatever the model writes, these return a verdict with a reason and never hang the trainer."""
from .code import CodeResult, run_code, run_code_batch, sandbox_kind
from .math import Verdict, check_math, check_math_batch, extract_answer, judge_math, last_boxed, verify_math_batch

__all__ = ["CodeResult", "run_code", "run_code_batch", "sandbox_kind", "Verdict", "check_math", "check_math_batch",
           "extract_answer", "judge_math", "last_boxed", "verify_math_batch"]
