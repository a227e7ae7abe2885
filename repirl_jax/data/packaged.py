"""Real data that ships on PyPI and works offline.

gsm_symbolic   reasoning-gym's GSM8K-format generator; its step-by-step solution (one step per
               line) plus \\boxed{answer} is the expert trajectory
champ          CHAMP (270 competition problems with reference steps) and its 540 model solutions
               with a human-marked first wrong step: a real test of a PRM's step judgements
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os

from .records import INSTRUCTION, DataError, Problem


def gsm_symbolic(n: int, split: str = "train", seed: int = 0, exclude: set[str] = frozenset()) -> list[Problem]:
    """n problems; train and test draw from different seeds and `exclude` removes given questions
    (pass the test questions when building train: see gsm_symbolic_splits)."""
    try:
        import reasoning_gym
    except ImportError:
        raise DataError("gsm_symbolic needs reasoning-gym: pip install 'repirl_jax[data]' (make setup does)") from None
    offset = {"train": 0, "test": 1_000_003}[split]
    ds = reasoning_gym.create_dataset("gsm_symbolic", size=n + len(exclude), seed=seed + offset)
    out = []
    for i, x in enumerate(ds):
        if x["question"] in exclude:
            continue
        steps = x["metadata"]["answer_cot"].strip()
        out.append(Problem(id=f"gsm_symbolic/{split}/{seed}/{i}", prompt=f"{x['question']}\n{INSTRUCTION}",
                           gold=str(x["answer"]), experts=[f"{steps}\n\\boxed{{{x['answer']}}}"], split=split,
                           source="gsm_symbolic"))
        if len(out) == n:
            break
    return out


def gsm_symbolic_splits(n_train: int, n_test: int, seed: int = 0) -> tuple[list[Problem], list[Problem]]:
    test = gsm_symbolic(n_test, "test", seed)
    train = gsm_symbolic(n_train, "train", seed, exclude={p.prompt.rsplit("\n", 1)[0] for p in test})
    assert not {p.prompt for p in train} & {p.prompt for p in test}
    return train, test


@dataclasses.dataclass
class LabeledSolution:
    """A model's solution with the human-marked first wrong step (None: no wrong step marked)."""

    problem_id: str
    text: str
    first_wrong_span: tuple[int, int] | None  # character span of the first wrong step in text
    author: str
    setting: str


def _champ_file() -> str:
    spec = importlib.util.find_spec("champ_dataset")
    if spec is None:
        raise DataError("CHAMP needs champ-dataset: pip install --no-deps champ-dataset (make setup does)")
    return os.path.join(list(spec.submodule_search_locations)[0], "dataset_files", "v0.json")


def champ() -> tuple[list[Problem], list[LabeledSolution]]:
    path = _champ_file()
    try:
        with open(path) as f:
            raw = json.load(f)["problems"]
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise DataError(f"{path}: cannot be read: {e}") from None
    problems, labeled = [], []
    for pid, p in raw.items():
        steps = [s["_text"] for s in p["solution"]["steps"]]
        problems.append(Problem(id=pid, prompt=f"{p['_text']}\n{INSTRUCTION}", gold=p["_answer"],
                                experts=["\n".join(steps) + f"\n\\boxed{{{p['_answer']}}}"], split="test",
                                source="champ", meta={"category": p["category"]}))
        for setting, a in (p.get("fws_annotations") or {}).items():
            span = None if a.get("start_idx") is None else (a["start_idx"], a["end_idx"])
            labeled.append(LabeledSolution(pid, a["text"], span, a.get("author", ""), setting))
    return problems, labeled
