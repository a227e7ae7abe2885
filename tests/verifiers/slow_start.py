"""A verifier-like function whose module import and first call take seconds (as math-verify's
sympy import and first parse do on a loaded machine): tests/test_faults.py checks that a task's
timeout counts neither."""
import time

time.sleep(1.5)
_warm = False


def double(x):
    global _warm
    if not _warm:  # lazy initialisation on the first call
        time.sleep(1.5)
        _warm = True
    return 2 * x
