"""A verifier-like module whose import takes seconds (as math-verify's sympy does on a loaded
machine): tests/test_faults.py checks that a task's timeout does not count it."""
import time

time.sleep(2.0)


def double(x):
    return 2 * x
