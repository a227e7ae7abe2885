"""One problem record, and reading row files so that nothing is dropped silently."""
from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import os
from typing import Any, Callable, Iterator

log = logging.getLogger(__name__)
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclasses.dataclass
class Problem:
    id: str
    prompt: str | list[dict]  # text, or chat messages
    kind: str = "math"  # math (gold answer) | code (tests)
    gold: str | None = None  # math: the final answer
    tests: str | None = None  # code: Python appended after the program (asserts / check(entry_point))
    stdio: list[tuple[str, str]] | None = None  # code: (stdin, expected stdout) pairs
    experts: list[str] = dataclasses.field(default_factory=list)  # expert solutions (trajectories)
    split: str = "train"
    source: str = ""
    meta: dict = dataclasses.field(default_factory=dict)


class DataError(ValueError):
    """A file that cannot be read at all: one line naming it."""


@dataclasses.dataclass
class ReadReport:
    """What reading a file kept and dropped; `bad` holds the first few (line, reason)."""

    path: str
    rows: int = 0
    kept: int = 0
    skipped: int = 0
    bad: list = dataclasses.field(default_factory=list)

    def log(self) -> "ReadReport":
        if self.skipped:
            log.warning("%s: skipped %d of %d rows; first: %s", self.path, self.skipped, self.rows,
                        "; ".join(f"line {n}: {why}" for n, why in self.bad))
        return self


def iter_jsonl(path: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object or the exception) for every non-empty line; .gz too."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield n, json.loads(line)
                    except json.JSONDecodeError as e:
                        yield n, e
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise DataError(f"{path}: cannot be read: {e}") from None


def read_rows(path: str, convert: Callable[[dict, int], Problem], keep_bad: int = 5) -> tuple[list[Problem], ReadReport]:
    """Converts each JSON row; a row that is not JSON, not an object, or that `convert` rejects
    (KeyError / ValueError / TypeError) is skipped, counted and (the first few) reported."""
    report, out = ReadReport(path), []
    for n, row in iter_jsonl(path):
        report.rows += 1
        try:
            if isinstance(row, Exception):
                raise ValueError(f"not JSON ({row.msg})")
            if not isinstance(row, dict):
                raise ValueError(f"not an object but {type(row).__name__}")
            out.append(convert(row, n))
            report.kept += 1
        except (KeyError, ValueError, TypeError) as e:
            report.skipped += 1
            if len(report.bad) < keep_bad:
                why = f"missing field {e}" if isinstance(e, KeyError) else str(e)
                report.bad.append((n, why[:120]))
    return out, report.log()
