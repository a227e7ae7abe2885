"""The `repirl` command. Bad input exits 2 with one line saying what and where."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

DEMO_PROMPTS = ("What is the capital of France?", "Natalia sold 48 clips in April and half as many in May. "
                "How many clips did she sell in total? Answer with the number.")


def cmd_demo(args) -> int:
    """Smoke run until the training loop lands: the packaged SmolLM2 answers chat prompts greedily."""
    from . import models, sampling

    t0 = time.time()
    path = models.smollm2_dir()
    cfg, params = models.load(path, dtype=args.dtype)
    tok = models.load_tokenizer(path)
    print(f"loaded SmolLM2-135M-Instruct ({cfg.num_layers} layers, width {cfg.hidden_size}) in {time.time() - t0:.1f}s")
    questions = args.prompt or DEMO_PROMPTS
    t0 = time.time()
    answers = sampling.chat(cfg, params, tok, questions, max_new_tokens=args.max_new_tokens)
    for q, a in zip(questions, answers):
        print(f"\n> {q}\n{a.strip()}")
    print(f"\n{len(questions)} answers in {time.time() - t0:.1f}s (greedy, compile included)")
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
    from . import loop

    cfg = load_config(args.config, args.set)
    last = loop.run(cfg, args.workdir)
    print(json.dumps({k: v for k, v in last.items() if not k.endswith("_s")}))
    return 0


BENCHES = ("sampler", "step_memory")


def cmd_bench(args) -> int:
    """Side-by-side benchmarks from benchmarks/ (peers from the `test`/`bench` extras)."""
    import importlib

    importlib.import_module(f"benchmarks.{args.name}").run(out=args.out, reps=args.reps)
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

    d = sub.add_parser("demo", help="the packaged SmolLM2-135M-Instruct answers chat prompts (greedy)")
    d.add_argument("--prompt", action="append", help="a user message (repeatable); default: two built-in ones")
    d.add_argument("--max-new-tokens", type=int, default=64)
    d.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    d.set_defaults(fn=cmd_demo)

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
    from .config import ConfigError
    from .data import DataError
    from .loop import TrainingAborted
    from .models.config import ModelLoadError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax narrates every save at INFO
    logging.getLogger("jax").setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is fetched from a hub at run time
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ModelLoadError, DataError, FileNotFoundError, FileExistsError, ConfigError, TrainingAborted) as e:
        print(f"repirl {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
