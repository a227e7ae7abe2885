"""Loaders for the real formats, on small fixture files written here; bad rows counted."""
import gzip
import os
import json

import pytest

from repirl_jax.data import DataError, chain, formats, prompts
from repirl_jax.verifiers import check_math, run_code


def write_jsonl(path, rows, raw_lines=()):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        for line in raw_lines:
            f.write(line + "\n")
    return str(path)


def test_gsm8k(tmp_path):
    p = write_jsonl(tmp_path / "gsm8k.jsonl", [
        {"question": "Natalia sold 48 clips in April and half as many in May. How many in total?",
         "answer": "In May she sold 48/2 = <<48/2=24>>24 clips.\nIn total 48+24 = <<48+24=72>>72.\n#### 72"},
        {"question": "Big numbers?", "answer": "It is 1,234.\n#### 1,234"},
        {"question": "no answer marker", "answer": "42"},
    ], raw_lines=["{not json", "[1, 2]"])
    probs, rep = formats.gsm8k(p)
    assert [x.gold for x in probs] == ["72", "1234"]
    assert (rep.rows, rep.kept, rep.skipped) == (5, 2, 3)
    assert [n for n, _ in rep.bad] == [3, 4, 5] and "####" in rep.bad[0][1] and "not JSON" in rep.bad[1][1]
    assert "<<" not in probs[0].experts[0] and check_math(probs[0].experts[0], probs[0].gold)
    assert "\\boxed{}" in probs[0].prompt


def test_math_and_math500(tmp_path):
    p = write_jsonl(tmp_path / "math.jsonl", [
        {"problem": "What is $\\frac{1}{2}+\\frac{1}{4}$?", "solution": "Sum: $\\boxed{\\frac{3}{4}}$.",
         "level": "Level 1", "type": "Algebra"},
        {"problem": "MATH-500 row", "solution": "so $\\boxed{5}$", "answer": "5", "unique_id": "test/algebra/1.json"},
        {"problem": "no answer", "solution": "nothing boxed"},
        {"solution": "missing problem \\boxed{1}"},
    ])
    probs, rep = formats.math_dataset(p)
    assert [x.gold for x in probs] == ["\\frac{3}{4}", "5"] and probs[1].id == "test/algebra/1.json"
    assert rep.skipped == 2 and "missing field 'problem'" in rep.bad[1][1]
    assert all(check_math(x.experts[0], x.gold) for x in probs)


def test_mbpp_and_stdio_and_eurus(tmp_path):
    p = write_jsonl(tmp_path / "mbpp.jsonl", [
        {"task_id": 2, "text": "Write a function to add.", "code": "def add(a, b):\n    return a + b",
         "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"], "test_setup_code": ""},
        {"task_id": 3, "text": "bad", "code": "x", "test_list": []},
    ])
    probs, rep = formats.mbpp(p)
    assert len(probs) == 1 and rep.skipped == 1
    assert run_code(probs[0].experts[0], probs[0].tests).passed
    p = write_jsonl(tmp_path / "lcb.jsonl", [
        {"id": "lc1", "prompt": "Read n, print n squared.", "tests": json.dumps([{"input": "3\n", "output": "9\n"}]),
         "solutions": ["print(int(input()) ** 2)"]}])
    probs, _ = formats.stdio_tasks(p)
    (inp, out), = probs[0].stdio
    assert run_code(probs[0].experts[0], stdin=inp, expected_stdout=out).passed
    p = write_jsonl(tmp_path / "eurus.jsonl", [
        {"data_source": "numina_olympiads", "prompt": [{"role": "user", "content": "1+1?"}], "ability": "math",
         "reward_model": {"ground_truth": "2", "style": "rule"}, "extra_info": {"index": 7}},
        {"data_source": "taco", "prompt": [{"role": "user", "content": "echo"}], "ability": "code",
         "reward_model": {"ground_truth": json.dumps({"inputs": ["a\n"], "outputs": ["a\n"]})}},
        {"data_source": "x", "prompt": [], "ability": "math"},
    ])
    probs, rep = formats.eurus(p)
    assert probs[0].gold == "2" and probs[0].id == "eurus/numina_olympiads/7" and probs[1].stdio == [("a\n", "a\n")]
    assert rep.skipped == 1


def test_humaneval_gz_fixture_and_expert_join(tmp_path):
    f = tmp_path / "he.jsonl.gz"
    with gzip.open(f, "wt") as g:
        g.write(json.dumps({"task_id": "T/0", "prompt": "def inc(x):\n", "canonical_solution": "    return x + 1\n",
                            "test": "def check(f):\n    assert f(1) == 2\n", "entry_point": "inc"}) + "\n")
    probs, _ = formats.humaneval(str(f))
    assert run_code(probs[0].experts[0], probs[0].tests).passed
    e = write_jsonl(tmp_path / "experts.jsonl", [{"problem_id": "T/0", "response": "def inc(x):\n    return 1 + x"},
                                                 {"problem_id": "T/404", "response": "x"}])
    probs, rep = formats.attach_experts(probs, e)
    assert len(probs[0].experts) == 2 and rep.skipped == 1 and "T/404" in rep.bad[0][1]


def test_unreadable_files_raise_one_line(tmp_path):
    with pytest.raises(DataError, match="missing.jsonl: file not found"):
        formats.gsm8k(str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(b"definitely not gzip")
    with pytest.raises(DataError, match="bad.jsonl.gz: cannot be read"):
        formats.gsm8k(str(bad))


def test_chain_task_is_deterministic_disjoint_and_solved_by_its_expert():
    task = chain.ChainTask(min_steps=1, max_steps=5, seed=3)
    train, test = chain.splits(task, 300, 100)
    train2, test2 = chain.splits(task, 300, 100)
    assert [p.prompt for p in train] == [p.prompt for p in train2] and [p.gold for p in test] == [p.gold for p in test2]
    assert not {p.prompt for p in train} & {p.prompt for p in test}
    assert len({p.prompt for p in train}) == 300
    assert {p.meta["steps"] for p in train} == {1, 2, 3, 4, 5}
    for p in train[:50] + test[:50]:
        lines = p.experts[0].splitlines()
        assert len(lines) == p.meta["steps"] + 1 and check_math(p.experts[0], p.gold)
    other, _ = chain.splits(chain.ChainTask(1, 5, seed=4), 50, 10)
    assert [p.prompt for p in other] != [p.prompt for p in train[:50]]
    with pytest.raises(ValueError, match="min_steps"):
        chain.ChainTask(min_steps=3, max_steps=2)


def test_prompt_encoding_chat_template_and_overflow(smollm2):
    _, _, tok, _ = smollm2
    train, _ = chain.splits(chain.ChainTask(1, 3), 4, 1)
    text = prompts.render(train[0], tok, system="You are a careful solver.")
    assert text.startswith("<|im_start|>system\nYou are a careful solver.") and text.endswith("<|im_start|>assistant\n")
    enc = prompts.encode(train, tok, max_len=10_000)
    assert len(enc.ids) == 4 and enc.dropped == 0
    short = min(len(i) for i in enc.ids) - 1
    assert prompts.encode(train, tok, max_len=short).dropped >= 1
    cut = prompts.encode(train, tok, max_len=short, overflow="truncate")
    assert cut.truncated >= 1 and max(len(i) for i in cut.ids) == short


def test_gsm_symbolic_packaged_splits_and_experts():
    from repirl_jax.data import packaged

    train, test = packaged.gsm_symbolic_splits(40, 10, seed=1)
    assert len(train) == 40 and len(test) == 10
    assert not {p.prompt for p in train} & {p.prompt for p in test}
    for p in train[:10]:
        assert len(p.experts[0].splitlines()) >= 2 and check_math(p.experts[0], p.gold)


def test_champ_packaged_with_first_wrong_step_labels():
    from repirl_jax.data import packaged

    problems, labeled = packaged.champ()
    assert len(problems) == 270 and len(labeled) == 540
    marked = [s for s in labeled if s.first_wrong_span]
    assert 0 < len(marked) < len(labeled)
    s = marked[0]
    assert 0 <= s.first_wrong_span[0] < s.first_wrong_span[1] <= len(s.text)
    assert {s.problem_id for s in labeled} <= {p.id for p in problems}


def test_tfds_array_record_round_trip(tmp_path):
    from repirl_jax.data import tfds_source

    train, test = chain.splits(chain.ChainTask(1, 3), 20, 5)
    test[0].stdio = [("1\n", "2\n")]
    manual = tfds_source.write_manual_dir({"train": train, "test": test}, str(tmp_path / "manual"))
    builder = tfds_source.build(manual, str(tmp_path / "tfds"))
    by_id = lambda ps: sorted(ps, key=lambda p: p.id)  # TFDS orders records by a hash of their key
    assert by_id(tfds_source.problems(builder, "train")) == by_id(train)
    got = by_id(tfds_source.problems(builder, "test"))
    assert got == by_id(test) and [p.stdio for p in got if p.stdio] == [[("1\n", "2\n")]]
    assert any(f.endswith(".array_record") or "array_record" in f for _, _, fs in os.walk(tmp_path / "tfds") for f in fs)


def test_eurus_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"data_source": "numina", "prompt": [{"role": "user", "content": "2+2?"}], "ability": "math",
             "reward_model": {"ground_truth": "4", "style": "rule"}, "extra_info": {"index": 1}}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "eurus.parquet")
    probs, rep = formats.eurus(str(tmp_path / "eurus.parquet"))
    assert probs[0].gold == "4" and probs[0].prompt == [{"role": "user", "content": "2+2?"}] and rep.kept == 1
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 nope")
    with pytest.raises(DataError, match="bad.parquet: cannot be read as parquet"):
        formats.eurus(str(tmp_path / "bad.parquet"))
