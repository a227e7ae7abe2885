"""DataConfig -> problems (chain variants, file tasks with held-out splits), the demo's word-level
tokenizer, and verification dispatched by problem kind."""
import dataclasses
import json
import random
import re

import numpy as np

import pytest

from repirl_jax.config import ConfigError, DataConfig
from repirl_jax.data import DataError, Problem, chain, prompts, tasks, vocab
from repirl_jax.verifiers import check_math
from repirl_jax.verifiers.dispatch import extract_code, verify


def replay(problem, modulus):
    """Recomputes the expert's lines from the prompt text: every line's result and the gold."""
    lines = problem.experts[0].split("\n")[:-1]
    value = None
    for line in lines:
        lhs, rhs = line.replace(" ", "").split("=")
        a, op, x = lhs[0] if lhs[0] != "-" else lhs[:2], None, None
        for i in range(1, len(lhs)):
            if lhs[i] in "+-*" and i > 0 and lhs[i - 1].isdigit():
                a, op, x = int(lhs[:i]), lhs[i], int(lhs[i + 1:])
                break
        assert value is None or a == value, (line, value)
        value = {"+": a + x, "-": a - x, "*": a * x}[op]
        value = value % modulus if modulus else value
        assert int(rhs) == value, line
    return value


@pytest.mark.parametrize("modulus,style", [(0, "words"), (10, "words"), (10, "symbols"), (7, "symbols")])
def test_chain_variants_are_consistent(modulus, style):
    train, test = chain.splits(chain.ChainTask(2, 5, 3, modulus, instruction=False, style=style), 60, 20)
    for p in train + test:
        assert replay(p, modulus) == int(p.gold) and check_math(p.experts[0], p.gold)
        assert len(p.experts[0].split("\n")) == p.meta["steps"] + 1 and "boxed{}" not in p.prompt
        if modulus:
            assert 0 <= int(p.gold) < modulus and f"mod{'ulo' if style == 'words' else ''} {modulus}" in p.prompt
    assert not {p.prompt for p in train} & {p.prompt for p in test}


def test_default_chain_text_is_unchanged():
    """The words style without modulus is the default task: its text must not drift."""
    (p,), _ = chain.splits(chain.ChainTask(3, 3, 0), 1, 1)
    assert p.prompt.startswith("Start with 2. Multiply by 5, then add 19, then subtract 2. What is the final number?")
    assert p.experts == ["2 * 5 = 10\n10 + 19 = 29\n29 - 2 = 27\n\\boxed{27}"]


def write_gsm8k(path, n):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"}) + "\n")
        f.write("{broken\n")
    return str(path)


def test_file_task_holds_out_the_last_rows(tmp_path):
    path = write_gsm8k(tmp_path / "g.jsonl", 10)
    train, test = tasks.load_problems(DataConfig(task="gsm8k", path=path, n_train=5, n_test=3))
    assert [p.gold for p in test] == ["8", "9", "10"] and [p.gold for p in train] == ["1", "2", "3", "4", "5"]
    other = write_gsm8k(tmp_path / "t.jsonl", 4)
    train, test = tasks.load_problems(DataConfig(task="gsm8k", path=path, test_path=other, n_train=0, n_test=2))
    assert len(train) == 10 and [p.gold for p in test] == ["1", "2"]
    with open(tmp_path / "experts.jsonl", "w") as f:
        f.write(json.dumps({"problem_id": train[0].id, "response": "Another way: \\boxed{1}"}) + "\n")
    train, _ = tasks.load_problems(DataConfig(task="gsm8k", path=path, n_test=3,
                                              experts_path=str(tmp_path / "experts.jsonl")))
    assert len(train[0].experts) == 2 and len(train[1].experts) == 1


def test_file_task_errors(tmp_path):
    with pytest.raises(ConfigError, match="data.path"):
        DataConfig(task="gsm8k")
    with pytest.raises(DataError, match="missing.jsonl: file not found"):
        tasks.load_problems(DataConfig(task="gsm8k", path=str(tmp_path / "missing.jsonl")))
    with pytest.raises(DataError, match="not enough to hold out"):
        tasks.load_problems(DataConfig(task="gsm8k", path=write_gsm8k(tmp_path / "g.jsonl", 3), n_test=3))


def test_word_level_tokenizer_round_trips_and_saves(tmp_path):
    from transformers import AutoTokenizer

    train, test = chain.splits(chain.ChainTask(1, 4, 0, 10, instruction=False, style="symbols"), 50, 10)
    tok = vocab.build_tokenizer([p.prompt for p in train] + [e for p in train for e in p.experts])
    assert len(tok) < 40  # digits, + - * = ( ) mod boxed { } \ and the specials
    for p in test:
        text = prompts.render(p, tok) + p.experts[0]
        ids = tok(text + tok.eos_token, add_special_tokens=False)["input_ids"]
        assert ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == text  # exact, spaces and newlines included
    assert prompts.render(test[0], tok).endswith("\nAnswer:\n")
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text)["input_ids"] == tok(text)["input_ids"] and again.eos_token == "<|im_end|>"


def test_verify_dispatches_by_kind():
    math_p = Problem(id="m", prompt="1+1?", gold="2")
    code_p = Problem(id="c", prompt="add", kind="code", tests="assert add(1, 2) == 3")
    stdio_p = Problem(id="s", prompt="echo", kind="code", stdio=[("3\n", "3"), ("4\n", "4")])
    good = "```python\ndef add(a, b):\n    return a + b\n```"
    texts = ["so \\boxed{2}", "\\boxed{3}", good, "def add(a, b): return a - b", "print(input())",
             "print(3)"]
    probs = [math_p, math_p, code_p, code_p, stdio_p, stdio_p]
    verdicts = verify(probs, texts, timeout_s=10, workers=2)
    assert [v.correct for v in verdicts] == [True, False, True, False, True, False]
    assert "failed" in verdicts[3].reason and verdicts[5].reason
    assert extract_code("intro\n```py\nx = 1\n```\nthen\n```python\nx = 2\n```") == "x = 2\n"


def test_mod100_chain_is_bijective_and_labels_are_exact():
    """The demo's testbed: two-digit values, single-digit operands, multipliers coprime to 100."""
    task = chain.ChainTask(1, 8, 2, 100, instruction=False, style="symbols", operand_max=9)
    train, test = chain.splits(task, 200, 20)
    for p in train + test:
        assert replay(p, 100) == int(p.gold)
        assert p.meta["lines"] == p.experts[0].split("\n")
        for op in re.findall(r"\*(\d+)", p.prompt):
            assert int(op) in (3, 7, 9)
        lab = chain.step_labels(p, p.experts[0])
        assert lab.first_wrong is None and all(lab.ok)
    p = next(q for q in train if q.meta["steps"] >= 3)
    lines = list(p.meta["lines"])
    slipped = lines[:1] + ["12+3=16"] + lines[2:]
    assert chain.step_labels(p, "\n".join(slipped)) == chain.StepLabels(slipped, [True] + [False] * (len(lines) - 1), 1)
    # a right line after a wrong one is not on the correct path; spaces and a trailing newline are ignored
    back = lines[:1] + ["x"] + lines[2:]
    assert chain.step_labels(p, "\n".join(back)).ok[2:] == [False] * (len(lines) - 2)
    spaced = " ".join(lines[0]) + "\n" + "\n".join(lines[1:]) + "\n"
    assert chain.step_labels(p, spaced).first_wrong is None
    # stops early: every line right, the missing step is the first wrong one; extra lines are wrong
    assert chain.step_labels(p, "\n".join(lines[:2])).first_wrong == 2
    assert chain.step_labels(p, "\n".join(lines + ["1+1=2"])) == chain.StepLabels(lines + ["1+1=2"],
                                                                                   [True] * len(lines) + [False],
                                                                                   len(lines))
    for junk in ("", "\\boxed{", "=\n=\n", "\n\n\n"):
        lab = chain.step_labels(p, junk)
        assert lab.first_wrong == 0 and not any(lab.ok)


def test_error_kind_names_the_first_wrong_step():
    """error_kind on hand-made responses: a sign slip, another arithmetic error, a copy error, a
    wrong answer line after right steps, a stop, and malformed text."""
    p = chain.make_problem(random.Random(0), 3, "train", 0, modulus=100, instruction=False, style="symbols",
                           operand_max=9, ops="+-*", additive_run=1)
    lines = p.meta["lines"]
    i = next(k for k, ln in enumerate(lines) if re.match(r"\d+[+-]", ln))
    a, op, x = re.match(r"(\d+)([+-])(\d+)", lines[i]).groups()
    slip = (int(a) - int(x) if op == "+" else int(a) + int(x)) % 100
    right = int(lines[i].split("=")[1])
    wrong = next(v for v in range(100) if v not in (slip, right))
    def kind(k_lines):
        return chain.error_kind(p, chain.step_labels(p, "\n".join(k_lines)))
    assert kind(lines) == "correct"
    assert kind(lines[:i] + [f"{a}{op}{x}={slip}"] + lines[i + 1:]) == "slip"
    assert kind(lines[:i] + [f"{a} {op} {x} = {wrong}"]) == "arithmetic"  # spaces ignored, as step_labels does
    assert kind(lines[:i] + [f"{(int(a) + 1) % 100}{op}{x}={right}"] + lines[i + 1:]) == "copy"
    assert kind(lines[:-1] + ["\\boxed{1000}"]) == "answer"
    assert kind(lines[:-1]) == kind(lines + ["1+1=2"]) == "length"
    for junk in ("", "\\boxed{", "=\n=", "7*3"):
        assert chain.error_kind(p, chain.step_labels(p, junk)) == "copy"


def test_additive_run_limits_runs_of_plus_minus():
    """additive_run=1: never two + / - steps in a row (the sum shortcut of data/chain.py), still
    every operation drawn; 0 leaves the generator exactly as before."""
    task = chain.ChainTask(5, 7, 1, 100, instruction=False, style="symbols", operand_max=9)
    alt = dataclasses.replace(task, additive_run=1)
    runs = []
    for p in chain.splits(alt, 300, 10)[0]:
        syms = re.findall(r"([+*-])\d", p.prompt)
        assert len(syms) == p.meta["steps"] and replay(p, 100) == int(p.gold)
        assert "++" not in "".join(s if s == "*" else "+" for s in syms)
        runs.append("".join(syms))
    assert {"+", "-", "*"} <= set("".join(runs)) and any("**" in r for r in runs)
    plain = chain.splits(task, 300, 10)[0]
    assert any("++" in "".join("*" if s == "*" else "+" for s in re.findall(r"([+*-])\d", p.prompt)) for p in plain)
    assert [p.prompt for p in plain] == [p.prompt for p in chain.splits(dataclasses.replace(task, additive_run=0), 300, 10)[0]]
    with pytest.raises(ConfigError, match="data: .*additive_run=1 needs ops with"):
        tasks.chain_task(DataConfig(modulus=100, operand_max=9, ops="+-", additive_run=1))


def test_slip_rate_writes_noisy_demonstrations_of_the_same_problems():
    """slip_rate: + / - lines of the expert solution slip their sign at that rate, the solution goes
    on from the slipped value (each line's own arithmetic stays right); prompts, gold and exact
    labels are those of slip_rate=0, so step_labels finds the first slip."""
    task = chain.ChainTask(5, 7, 1, 100, instruction=False, style="symbols", operand_max=9, additive_run=1)
    clean = chain.splits(task, 300, 10)[0]
    noisy = chain.splits(dataclasses.replace(task, slip_rate=0.6), 300, 10)[0]
    n_pm = slips = 0
    for p, q in zip(clean, noisy):
        assert (p.prompt, p.gold, p.meta) == (q.prompt, q.gold, q.meta)
        written, want = q.experts[0].split("\n"), p.meta["lines"]
        assert len(written) == len(want) and p.experts[0].split("\n") == want
        value = None
        for line, sym in zip(written[:-1], re.findall(r"([+*-])\d", p.prompt)):
            a, x, r = map(int, re.fullmatch(r"(\d+)[+*-](\d+)=(\d+)", line).groups())
            assert value is None or a == value  # goes on from what it wrote
            slipped = sym in "+-" and r == {"+": a - x, "-": a + x}[sym] % 100
            assert slipped or r == {"+": a + x, "-": a - x, "*": a * x}[sym] % 100
            n_pm += sym in "+-"
            slips += slipped
            value = r
        assert written[-1] == f"\\boxed{{{value}}}"
        first = next((i for i, (w, c) in enumerate(zip(written, want)) if w != c), None)
        assert chain.step_labels(q, q.experts[0]).first_wrong == first
    assert 0.5 < slips / n_pm < 0.7, slips / n_pm  # 300 problems, ~700 + / - lines
    with pytest.raises(ConfigError, match=r"data: .*slip_rate=0.5 must be in .* needs '\+' or '-'"):
        tasks.chain_task(DataConfig(modulus=10, ops="*"), slip_rate=0.5)
    with pytest.raises(ConfigError, match="data: .*slip_rate=1.5"):
        tasks.chain_task(DataConfig(), slip_rate=1.5)


def test_filler_rate_adds_harmless_words_the_labels_ignore():
    """filler_rate: each expert line but the \\boxed one starts with a filler word at that rate (each of
    FILLERS drawn), the rest of the line and the problem those of filler_rate=0; step_labels and error_kind
    read a line with a filler as the line without it (a slip after a filler is still found)."""
    task = chain.ChainTask(5, 7, 1, 100, instruction=False, style="symbols", operand_max=9, additive_run=1)
    clean = chain.splits(task, 200, 10)[0]
    filled = chain.splits(tasks.chain_task(DataConfig(min_steps=5, max_steps=7, seed=1, modulus=100,
                                                      instruction=False, style="symbols", operand_max=9,
                                                      additive_run=1, filler_rate=0.5)), 200, 10)[0]
    n_lines, words = 0, []
    for p, q in zip(clean, filled):
        assert (p.prompt, p.gold, p.meta) == (q.prompt, q.gold, q.meta)
        for c, f in zip(p.experts[0].split("\n"), q.experts[0].split("\n")):
            word, _, rest = f.rpartition(" ")
            assert rest == c and (word in chain.FILLERS or word == "")
            words.append(word)
        n_lines += len(p.meta["lines"]) - 1
        assert words[-1] == ""  # the boxed line
        assert chain.step_labels(q, q.experts[0]).first_wrong is None
    assert 0.4 < sum(map(bool, words)) / n_lines < 0.6 and set(words) == {"", *chain.FILLERS}
    p = next(p for p in clean if re.match(r"\d+[+-]", p.meta["lines"][0]))
    lines = p.meta["lines"]
    a, op, x = re.match(r"(\d+)([+-])(\d+)", lines[0]).groups()
    slip = (int(a) - int(x) if op == "+" else int(a) + int(x)) % 100
    lab = chain.step_labels(p, "\n".join([f"so {a}{op}{x}={slip}"] + lines[1:]))
    assert lab.first_wrong == 0 and chain.error_kind(p, lab) == "slip"
    assert chain.step_labels(p, "\n".join(["then " + lines[0], *lines[1:]])).first_wrong is None
    assert chain.step_labels(p, "\n".join(["thence" + lines[0], *lines[1:]])).first_wrong == 0  # a word, not a prefix
    with pytest.raises(ConfigError, match="data: .*filler_rate=2"):
        tasks.chain_task(DataConfig(filler_rate=2))


def test_step_labels_refuse_other_tasks_and_bad_options():
    with pytest.raises(ValueError, match="only chain-task problems"):
        chain.step_labels(Problem(id="gsm/1", prompt="q", gold="1", source="gsm_symbolic"), "1")
    with pytest.raises(ConfigError, match="data: .*no multiplier"):
        tasks.chain_task(DataConfig(modulus=10, operand_max=2, ops="*"))
    with pytest.raises(ConfigError, match="data: .*operand_max"):
        tasks.chain_task(DataConfig(modulus=10, operand_max=10))
    with pytest.raises(ConfigError, match="data: .*ops"):
        tasks.chain_task(DataConfig(ops="+/"))


def test_token_steps_follow_the_newlines():
    from repirl_jax import steps

    train, _ = chain.splits(chain.ChainTask(2, 3, 0, 100, instruction=False, style="symbols", operand_max=9), 5, 1)
    tok = vocab.build_tokenizer([p.prompt for p in train] + [p.experts[0] for p in train])
    p = train[0]
    ids = tok(p.experts[0] + tok.eos_token, add_special_tokens=False)["input_ids"]
    of = steps.token_steps(tok, ids)
    assert of[0] == 0 and of[-1] == len(p.meta["lines"]) - 1 and np.all(np.diff(of) >= 0)
    lab, tok_ok = steps.labels(p, tok, ids)
    assert lab.first_wrong is None and tok_ok.all()
    bad = tok("\n".join(["1+1=2"] + p.meta["lines"][1:]), add_special_tokens=False)["input_ids"]
    lab, tok_ok = steps.labels(p, tok, bad)
    # the slipped first step's tokens are 0, the later steps' unlabelled (-1)
    of_bad = steps.token_steps(tok, bad)
    assert lab.first_wrong == 0 and set(tok_ok[of_bad == 0].tolist()) == {0.0}
    assert set(tok_ok[of_bad > 0].tolist()) == {-1.0}
    mid = tok("\n".join(p.meta["lines"][:1] + ["1+1=2"] + p.meta["lines"][2:]), add_special_tokens=False)["input_ids"]
    lab, tok_ok = steps.labels(p, tok, mid)
    of_mid = steps.token_steps(tok, mid)
    assert lab.first_wrong == 1 and tok_ok.tolist() == [1.0 if k == 0 else 0.0 if k == 1 else -1.0 for k in of_mid]
    n = min(len(bad), len(mid))  # a [G, K, T] batch of rollouts: row by row, as one response each
    batch = np.array([[bad[:n], mid[:n]]] * 2)
    np.testing.assert_array_equal(steps.token_steps(tok, batch), np.array([[of_bad[:n], of_mid[:n]]] * 2))
    np.testing.assert_allclose(steps.step_scores(np.arange(len(ids), dtype=float), of, len(p.meta["lines"]))[0],
                               np.arange(len(ids))[of == 0].mean())
