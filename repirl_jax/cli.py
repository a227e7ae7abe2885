"""The `repirl` command. Bad input exits 2 with one line saying what and where."""
from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import logging
import os
import sys

def cmd_demo(args) -> int:
    """Imitation warm-up, then RLOO vs rePIRL on harder levels, held-out report (repirl_jax/demo.py)."""
    from . import demo

    cfg = load_config(args.config, []) if args.config else demo.default_config()
    report = demo.run(cfg, args.workdir, args.set or [], args.config or "")
    print(f"\nreport: {report}")
    return 0


def cmd_eval(args) -> int:
    """A policy (and a PRM) on held-out problems: eval_runner.evaluate's tables (outcome metrics
    with 95% bootstrap CIs, the PRM beside null scorers, best-of-n vs majority vote, step metrics
    on the chain task), and with --out its summary, per-problem results and curves as JSON."""
    from . import eval_runner, models
    from .config import ConfigError, DataConfig, apply_overrides
    from .data import prompts, tasks

    if args.champ is not None:
        from . import champ_eval

        return champ_eval.cli(args)
    if not args.task or (args.beam and not args.prm):
        raise ConfigError("eval needs --task (or --champ), and --beam needs --prm (the PRM guides the search)")
    # --set takes data fields as the training config names them (data.modulus=100) or bare (modulus=100)
    sets = [s.removeprefix("data.") for s in args.set or []]
    d = apply_overrides(DataConfig(task=args.task, path=args.data or "", n_train=args.n if args.split == "train" else 1,
                                   n_test=args.n), sets)
    train, test = tasks.load_problems(d)
    problems = test if args.split == "test" else train
    pc, params = models.load(args.policy)
    tok = models.load_tokenizer(args.policy)
    # The prompt limit: the one asked for, else whatever the model's context leaves after the
    # response (a training default like 128 would silently shrink the held-out set).
    if not any(s.split("=", 1)[0] == "max_prompt_len" for s in sets):
        d = dataclasses.replace(d, max_prompt_len=pc.max_position_embeddings - args.max_new_tokens)
    enc = prompts.encode(problems, tok, d.max_prompt_len)
    print(f"{len(enc.kept)} of {len(problems)} prompts evaluated; {enc.dropped} dropped for exceeding "
          f"data.max_prompt_len={d.max_prompt_len} tokens" + (" (raise it with --set data.max_prompt_len=N)"
                                                             if enc.dropped else ""))
    if not enc.kept:
        raise ConfigError(f"every prompt exceeds data.max_prompt_len={d.max_prompt_len} tokens; raise it with "
                          "--set data.max_prompt_len=N")
    problems = [problems[i] for i in enc.kept]
    use_prm = args.prm and (args.samples > 1 or args.beam)
    scorer = eval_runner.PRMScorer.load(args.prm, (pc, params)) if use_prm else None
    init = scorer.initial(models.load(args.prm_start)) if scorer is not None and args.prm_start else None
    rep = eval_runner.evaluate(pc, params, tok, problems, enc.ids, scorer=scorer, init_scorer=init, samples=args.samples,
                               max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
                               beam=args.beam, expansions=args.expansions, workers=args.workers,
                               max_prompts=d.rollout_prompts, slots=d.rollout_slots)
    print(rep.markdown())
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"policy": args.policy, "prm": args.prm, "task": args.task, "split": args.split,
                       "n": len(problems), "dropped": enc.dropped, "max_prompt_len": d.max_prompt_len,
                       "samples": args.samples, "temperature": args.temperature, "problem_ids": [p.id for p in problems],
                       **rep.to_json()}, f, indent=1)
    return 0


def cmd_compare(args) -> int:
    """Paired bootstrap over problems between `repirl eval --out` files (repirl_jax/compare.py)."""
    from .compare import CompareError, compare_files

    try:
        print(compare_files(args.runs, seed=args.seed))
    except CompareError as e:
        print(f"repirl compare: error: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_plot(args) -> int:
    from . import plots

    runs = {os.path.basename(os.path.normpath(d)): d for d in args.workdirs}
    paths = plots.plot_runs(runs, args.out or args.workdirs[0])
    print("\n".join(paths))
    return 0


def cmd_convert(args) -> int:
    """Any loadable checkpoint (HF dir or GGUF) -> HF dir with config, safetensors, tokenizer."""
    from . import models

    cfg, params = models.load(args.src, dtype=args.dtype)
    try:
        tok = models.load_tokenizer(args.src)
    except (OSError, ValueError) as e:
        tok = None
        logging.warning("%s: no tokenizer written (%s)", args.src, str(e).splitlines()[0])
    models.export_hf(cfg, params, args.out, tokenizer=tok)
    print(f"wrote {args.out} ({cfg.family}, {cfg.num_layers} layers, {args.dtype})")
    return 0


def load_config(path: str, overrides: list[str]):
    """A configs/*.py file's config(), with --set overrides applied."""
    import importlib.util

    from .config import apply_overrides

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: config file not found")
    spec = importlib.util.spec_from_file_location("repirl_user_config", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not hasattr(mod, "config"):
        from .config import ConfigError

        raise ConfigError(f"{path}: defines no config() function")
    return apply_overrides(mod.config(), overrides or [])


def cmd_train(args) -> int:
    from . import distributed, loop

    distributed.initialize_from_env()  # before anything touches a device; a no-op for one process

    cfg = load_config(args.config, args.set)
    last = loop.run(cfg, args.workdir)
    print(json.dumps({k: v for k, v in last.items() if not k.endswith("_s")}))
    return 0


BENCHES = ("sampler", "step_memory", "step", "iteration", "attention", "rollout")
# What a subcommand imports beyond install_requires, checked before any work starts (`bench
# iteration` would otherwise find TRL missing after running our side for 20 minutes).
BENCH_EXTRA = "pip install -e '.[bench]'"
NEEDS = {  # (command, variant) -> (modules, how to install them)
    ("bench", "sampler"): (("torch",), BENCH_EXTRA),
    ("bench", "iteration"): (("torch", "trl", "datasets"), BENCH_EXTRA),
    ("eval", "champ"): (("champ_dataset",), "pip install --no-deps champ-dataset (make setup does)"),
}


def missing_modules(args) -> str | None:
    """One line naming what this subcommand needs and how to install it, or None."""
    import importlib.util

    variant = args.name if args.command == "bench" else "champ" if getattr(args, "champ", None) is not None else ""
    modules, how = NEEDS.get((args.command, variant), ((), ""))
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return f"{' '.join(filter(None, (args.command, variant)))} needs {', '.join(missing)}, not installed: {how}" \
        if missing else None


def cmd_bench(args) -> int:
    """Side-by-side benchmarks from benchmarks/ (peers from the `test`/`bench` extras)."""
    import importlib

    if args.mode and args.name != "rollout":
        from .config import ConfigError

        raise ConfigError(f"bench {args.name}: --mode is an option of bench rollout only")
    mode = {"mode": args.mode} if args.mode else {}
    importlib.import_module(f"benchmarks.{args.name}").run(out=args.out, reps=args.reps, **mode)
    return 0


def cmd_plan(args) -> int:
    """Per-device memory of a config on a TPU slice or N devices; exit 1 when it cannot fit."""
    from . import plan
    from .config import ConfigError

    cfg = load_config(args.config, args.set)
    if args.devices is not None and args.hbm_gb is None:
        raise ConfigError("--devices needs --hbm-gb (memory per device)")
    target = plan.parse_topology(args.topology) if args.topology else plan.devices_target(args.devices, args.hbm_gb)
    return plan.run(cfg, target, aot=not args.no_aot)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="repirl", description="rePIRL: process reward models by inverse RL, in JAX")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="from nothing: imitation warm-up, then RLOO vs rePIRL, held-out report (CPU, minutes)")
    d.add_argument("--workdir", default="runs/demo", help="every stage's output and report.md (stages resume)")
    d.add_argument("--config", help="a file whose config() returns a demo.DemoConfig (default: configs/demo.py's)")
    d.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field, e.g. rl.train.steps=10")
    d.set_defaults(fn=cmd_demo)

    e = sub.add_parser("eval", help="evaluate a policy (and a PRM) on held-out problems, with 95%% bootstrap CIs")
    e.add_argument("--policy", required=True, help="HF model dir (e.g. WORKDIR/final/policy)")
    e.add_argument("--prm", help="a training run's final dir (WORKDIR/final): PRM best-of-N, weighted vote, AUROC")
    e.add_argument("--prm-start", metavar="DIR", help="with --prm: the checkpoint its trunk started from (e.g. "
                   "runs/demo/start): adds the prm_init null, the same PRM untrained, beside it")
    e.add_argument("--task", choices=("chain", "gsm_symbolic", "gsm8k", "math", "eurus"))
    e.add_argument("--data", help="the data file for gsm8k / math / eurus")
    e.add_argument("--split", choices=("test", "train"), default="test")
    e.add_argument("--n", type=int, default=100, help="held-out problems")
    e.add_argument("--samples", type=int, default=1, help="samples per problem at --temperature: avg@N, pass@k, "
                   "maj@N, and the PRM (with --prm) beside null scorers: ranking, AUROC, best-of-n, step metrics")
    e.add_argument("--temperature", type=float, default=1.0)
    e.add_argument("--max-new-tokens", type=int, default=256)
    e.add_argument("--workers", type=int, default=2, help="verifier processes")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--set", action="append", metavar="KEY=VALUE", help="a data field, e.g. data.min_steps=3, "
                   "data.modulus=100, data.max_prompt_len=256 (longer prompts are dropped, and counted), or "
                   "data.rollout_prompts=16 (prompts per sampler call: bounds the KV cache), data.rollout_slots=32 "
                   "(continuous batching with 32 decode slots, also for --beam); the data. is optional")
    e.add_argument("--out", help="write summary and per-problem results here (JSON)")
    e.add_argument("--beam", type=int, default=0, metavar="B", help="PRM step-level beam search of width B, steps "
                   "ending at a newline, at --temperature (needs --prm): the prm_beam metric")
    e.add_argument("--expansions", type=int, default=4, metavar="M", help="--beam: samples per beam per step")
    e.add_argument("--champ", type=int, nargs="?", const=0, metavar="N", help="instead of --task: the PRM's "
                   "first-wrong-step predictions against CHAMP's human labels (all problems, or a seeded N)")
    e.set_defaults(fn=cmd_eval)

    cp = sub.add_parser("compare", help="paired bootstrap over problems between `repirl eval --out` files: "
                                        "differences vs the first, with 95%% CIs and p-values; A0.json,A1.json "
                                        "(comma-separated seeds of one method) compares their per-problem mean")
    cp.add_argument("runs", nargs="+", metavar="RUN.json[,SEED2.json,...]")
    cp.add_argument("--seed", type=int, default=0)
    cp.set_defaults(fn=cmd_compare)

    pt = sub.add_parser("plot", help="PNG curves from training workdirs' metrics.jsonl (one line per run)")
    pt.add_argument("workdirs", nargs="+")
    pt.add_argument("--out", help="output dir (default: the first workdir)")
    pt.set_defaults(fn=cmd_plot)

    c = sub.add_parser("convert", help="convert an HF dir or a GGUF file into an HF dir (safetensors + tokenizer)")
    c.add_argument("src", help="HF model directory or .gguf file")
    c.add_argument("out", help="output directory")
    c.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    c.set_defaults(fn=cmd_convert)

    t = sub.add_parser("train", help="train a policy and a PRM with rePIRL (resumes from WORKDIR's checkpoint)")
    t.add_argument("--config", required=True, help="a configs/*.py file")
    t.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl and final exports go here")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field, e.g. train.steps=6")
    t.set_defaults(fn=cmd_train)

    b = sub.add_parser("bench", help="speed benchmarks, ours and the peer side by side; prints ratios")
    b.add_argument("name", choices=BENCHES)
    b.add_argument("--out", help="write the result JSON here")
    b.add_argument("--reps", type=int, default=3, help="timed repetitions per side (median reported)")
    b.add_argument("--mode", choices=("synthetic", "smollm2"), help="rollout: a counting model with log-normal "
                   "lengths (default), or SmolLM2-135M on gsm_symbolic prompts")
    b.set_defaults(fn=cmd_bench)

    pl = sub.add_parser("plan", help="per-device memory of a config on a TPU slice or N devices; refuses a run "
                                     "that cannot fit")
    pl.add_argument("--config", required=True, help="a configs/*.py file")
    where = pl.add_mutually_exclusive_group(required=True)
    where.add_argument("--topology", help="TPU slice as Cloud TPU names it: v5e-16, v4-32, v5p-16, v6e-8, ...")
    where.add_argument("--devices", type=int, help="number of devices (with --hbm-gb)")
    pl.add_argument("--hbm-gb", type=float, help="memory per device in GiB")
    pl.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
    pl.add_argument("--no-aot", action="store_true", help="skip compiling the step for the TPU topology")
    pl.set_defaults(fn=cmd_plan)
    return p


def main(argv=None) -> int:
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data import DataError
    from .loop import TrainingAborted
    from .models.config import ModelLoadError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax narrates every save at INFO
    logging.getLogger("jax").setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is fetched from a hub at run time
    args = build_parser().parse_args(argv)
    missing = missing_modules(args)
    if missing:
        print(f"repirl {args.command}: error: {missing}", file=sys.stderr)
        return 2
    try:
        return args.fn(args)
    # ValueError: what our checks raise for bad input elsewhere (generate's limits, task parameters)
    except (ModelLoadError, DataError, FileNotFoundError, FileExistsError, ConfigError, TrainingAborted,
            CheckpointError, ValueError) as e:
        print(f"repirl {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk is a fault a long run meets; other OS errors are bugs to see
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"repirl {args.command}: error: disk full: {e}; free space and rerun the same command (training "
              "resumes from its last finished checkpoint)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
