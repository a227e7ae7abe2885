"""DataConfig -> (train, test) problems: the built-in tasks and the real file formats.

A file task reads `data.path` in its real format (GSM8K jsonl, MATH jsonl, Eurus-2-RL-Data jsonl or
parquet); the held-out split is `data.test_path` or, when that is empty, the last `n_test` rows
(taken before any training row is used, so train and test never share a problem). `n_train` caps
the training rows (0 = all). Expert jsonl files are joined by problem id. Every skipped row is
counted in the reader's report and logged.
"""
from __future__ import annotations

import logging

from ..config import DataConfig
from . import chain, formats, packaged
from .records import DataError, Problem

log = logging.getLogger(__name__)
READERS = {"gsm8k": formats.gsm8k, "math": formats.math_dataset, "eurus": formats.eurus}


def chain_task(d: DataConfig, **changes) -> chain.ChainTask:
    """The chain task a DataConfig describes (its fields replaced by `changes`); a bad option is
    one ConfigError line naming the data field."""
    from ..config import ConfigError

    kw = dict(min_steps=d.min_steps, max_steps=d.max_steps, seed=d.seed, modulus=d.modulus,
              instruction=d.instruction, style=d.style, ops=d.ops, operand_max=d.operand_max,
              additive_run=d.additive_run, filler_rate=d.filler_rate) | changes
    try:
        return chain.ChainTask(**kw)
    except ValueError as e:
        raise ConfigError(f"data: {e}") from None


def load_problems(d: DataConfig) -> tuple[list[Problem], list[Problem]]:
    if d.task == "chain":
        return chain.splits(chain_task(d), d.n_train, d.n_test)
    if d.task == "gsm_symbolic":
        return packaged.gsm_symbolic_splits(d.n_train, d.n_test, d.seed)
    read = READERS[d.task]
    rows, _ = read(d.path, split="train")
    if d.test_path:
        test, _ = read(d.test_path, split="test")
        test = test[:d.n_test] if d.n_test else test
    else:
        if len(rows) <= d.n_test:
            raise DataError(f"{d.path}: {len(rows)} usable rows, not enough to hold out data.n_test={d.n_test}")
        rows, test = rows[:len(rows) - d.n_test], rows[len(rows) - d.n_test:]
    train = rows[:d.n_train] if d.n_train else rows
    if d.experts_path:
        formats.attach_experts(train, d.experts_path)
    if not train:
        raise DataError(f"{d.path}: no usable training rows")
    log.info("%s: %d train, %d test problems (%d with expert solutions)", d.path, len(train), len(test),
             sum(bool(p.experts) for p in train))
    return train, test
