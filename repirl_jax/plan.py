"""Memory plan of a training config on a device mesh, made before anything is allocated.

    repirl plan --config configs/qwen25_3b_math.py --topology v5e-16
    repirl plan --config configs/tiny_cpu.py --devices 8 --hbm-gb 16

Per device: params, AdamW moments and frozen copies (exact: the abstract TrainState's leaves,
divided by the mesh axes each dimension is sharded on, by the same rules as the run), gradients
and activations of the dual step's two updates and the rollout's KV cache (estimates). The peak
is the state plus the largest of the three phases (rollout, PRM update, policy update). With
libtpu installed and a --topology, the dual step is also compiled ahead of time for that TPU
slice and XLA's memory analysis per chip is reported (and decides the fit together with the
rollout estimate). A run that cannot fit is refused: exit 1, one line saying by how much.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import time

import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh

from . import sampling
from . import train_step as ts
from .config import ConfigError, TrainConfig
from .models import transformer
from .models.config import ModelConfig
from .sharding import Layout

GIB = 2 ** 30

# Shapes of models the planner knows without their files, keyed by the path's basename.
KNOWN_SHAPES = {
    # Qwen/Qwen2.5-3B-Instruct config.json (as mirrored on the hub, e.g.
    # huggingface.co/osllmai-community/Qwen2.5-3B-Instruct, "_name_or_path": "Qwen/Qwen2.5-3B-Instruct"):
    # Qwen2ForCausalLM, hidden 2048, intermediate 11008, 36 layers, 16 heads, 2 KV heads,
    # vocab 151936, rope_theta 1e6, tied embeddings, bos 151643, eos 151645.
    "Qwen2.5-3B-Instruct": dict(
        model_type="qwen2", vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
        num_attention_heads=16, num_key_value_heads=2, rope_theta=1000000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=True, max_position_embeddings=32768, bos_token_id=151643, eos_token_id=151645),
    # Qwen3-4B(-Base) config.json: Qwen3ForCausalLM, hidden 2560, intermediate 9728, 36 layers,
    # 32 heads, 8 KV heads, head_dim 128, vocab 151936, rope_theta 1e6, tied embeddings (the same
    # shapes in every Qwen3-4B copy seen, e.g. huggingface.co/MultiRL/qwen3_4b_instruct_sft; the
    # Base model's eos is 151643, per huggingface.co/willcb/Qwen3-4B-Base generation_config.json).
    "Qwen3-4B-Base": dict(
        model_type="qwen3", vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, rope_theta=1000000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=True, max_position_embeddings=32768, bos_token_id=151643, eos_token_id=151643),
    # The packaged SmolLM2-135M-Instruct (DESIGN.md section 5).
    "smollm2": dict(
        model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, head_dim=64, rope_theta=100000.0, tie_word_embeddings=True),
}
SMOLLM2_VOCAB = 49152  # "tiny" models use the SmolLM2 tokenizer (loop.load_models)

# family: (HBM GiB per JAX device, TensorCores counted per chip in the Cloud TPU name, libtpu
# topology prefix, chip config). v4 and v5p chips hold two TensorCores that JAX drives as ONE
# device ("megacore") sharing the chip's HBM, and their Cloud names count TensorCores: v4-32 is
# 16 chips = 16 JAX devices of 32 GiB (libtpu: "v4:2x2x4", chip_config_name="megacore").
# v5e / v6e have one TensorCore per chip and names count chips: v5e-16 = 16 devices of 16 GiB.
TPU_FAMILIES = {
    "v5e": (16, 1, "v5e", "default"),
    "v6e": (32, 1, "v6e", "default"),
    "v4": (32, 2, "v4", "megacore"),
    "v5p": (95, 2, "v5", "megacore"),
}
ALIASES = {"v5litepod": "v5e"}  # the Cloud accelerator-type spelling
GRID_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}
GRID_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4), 128: (4, 4, 8),
           256: (4, 8, 8), 512: (8, 8, 8)}


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    devices: int
    hbm_bytes: int  # per JAX device
    topology: dict | None = None  # jax.experimental.topologies.get_topology_desc kwargs (TPU only)


def parse_topology(name: str) -> Target:
    m = re.fullmatch(r"([a-z0-9]+)-(\d+)", name.strip().lower())
    fam = ALIASES.get(m.group(1), m.group(1)) if m else None
    if fam not in TPU_FAMILIES:
        raise ConfigError(f"--topology {name!r}: expected FAMILY-SIZE with FAMILY one of "
                          f"{', '.join(TPU_FAMILIES)} (e.g. v5e-16, v4-32)")
    hbm, cores, prefix, chip_config = TPU_FAMILIES[fam]
    chips, rem = divmod(int(m.group(2)), cores)
    grids = GRID_3D if cores == 2 else GRID_2D
    if rem or chips not in grids:
        sizes = ", ".join(f"{fam}-{c * cores}" for c in grids)
        raise ConfigError(f"--topology {name!r}: unknown slice size; known: {sizes}")
    grid = grids[chips]
    dims = "x".join(map(str, grid))
    host = (1, 1, 1) if chips == 1 else (2, 4, 1) if chips == 8 and cores == 1 else (2, 2, 1)
    # wraparound links exist on full 16-chip rings (2D) and on 3D slices of 4x4x4 and up
    wrap = tuple((d == 16) if cores == 1 else min(grid) >= 4 for d in (*grid, 1)[:3])
    topo = dict(topology_name=f"{prefix}:{dims}", chip_config_name=chip_config, chips_per_host_bounds=host,
                num_slices=1, wrap=wrap)
    return Target(f"{fam}-{chips * cores} ({chips} chips, {prefix}:{dims})", chips, hbm * GIB, topo)


def local_target() -> Target | None:
    """This run's devices as a Target, HBM from the backend (None where it reports no limit, as
    on CPU): what the training loop can pass to check_fits before placing anything."""
    stats = jax.devices()[0].memory_stats() or {}
    limit = stats.get("bytes_limit")
    if not limit:
        return None
    return Target(f"{jax.device_count()} x {jax.devices()[0].device_kind}", jax.device_count(), limit)


def devices_target(n: int, hbm_gb: float) -> Target:
    if n < 1 or hbm_gb <= 0:
        raise ConfigError(f"--devices {n} --hbm-gb {hbm_gb}: need >= 1 device and > 0 GiB")
    return Target(f"{n} device(s) of {hbm_gb:g} GiB", n, int(hbm_gb * GIB))


# ------------------------------------------------------------------ model shapes
def model_config(path: str, cfg: TrainConfig) -> ModelConfig:
    """The architecture of a ModelSource path without loading weights: its config.json when the
    directory exists, else KNOWN_SHAPES by basename; "tiny" as loop.load_models builds it."""
    m = cfg.model
    kw = dict(dtype=m.dtype, param_dtype=m.dtype, remat=m.remat)
    if path == "tiny":
        w = m.tiny_width
        return ModelConfig(family="llama", vocab_size=SMOLLM2_VOCAB, hidden_size=w, intermediate_size=2 * w,
                           num_layers=m.tiny_layers, num_heads=4, num_kv_heads=2, head_dim=w // 4,
                           tie_word_embeddings=True, **kw)
    if os.path.isfile(os.path.join(path, "config.json")):
        return ModelConfig.from_file(os.path.join(path, "config.json"), **kw)
    base = os.path.basename(path.rstrip("/"))
    if base not in KNOWN_SHAPES:
        raise ConfigError(f"model path {path!r}: no config.json there and no known shapes for {base!r} "
                          f"(known: {', '.join(KNOWN_SHAPES)}, tiny)")
    return ModelConfig.from_hf(KNOWN_SHAPES[base], source=f"plan.KNOWN_SHAPES[{base!r}]", **kw)


def step_config(cfg: TrainConfig) -> ts.StepConfig:
    pol = model_config(cfg.model.policy, cfg)
    prm = pol if cfg.prm.form == "shared" else model_config(cfg.model.prm or cfg.model.policy, cfg)
    return ts.StepConfig(pol, prm, cfg.prm, cfg.policy)


def batch_shapes(cfg: TrainConfig) -> dict:
    d = cfg.data
    N = d.prompts_per_step * d.oversample  # prompts sampled per step; R of them per sampler call
    return dict(G=d.prompts_per_step, K=d.samples, E=d.experts, P=sampling.bucket(d.max_prompt_len),
                T=d.max_new_tokens, N=N, R=min(d.rollout_prompts, N) if d.rollout_prompts else N,
                S=d.rollout_slots)


# ------------------------------------------------------------------ per-device bytes
def _shards(layout: Layout, axes, shape) -> int:
    spec = layout.spec(axes, shape)
    return math.prod(layout.mesh.shape[a] for e in spec if e for a in ((e,) if isinstance(e, str) else e))


def _dtype_bytes(name: str) -> int:
    return jnp.dtype(name).itemsize


def _tree_bytes(tree, shardings) -> int:
    """Bytes per device of a tree of ShapeDtypeStructs under a parallel tree of shardings."""
    sizes = jax.tree.map(lambda x, s: math.prod(s.shard_shape(x.shape)) * x.dtype.itemsize, tree, shardings)
    return sum(jax.tree.leaves(sizes))


def _activations(mc: ModelConfig, layout: Layout, rows: int, L: int, T: int, *, backward: bool,
                 logits: int, chunk: int) -> int:
    """Live activation bytes per device of one microbatch through the trunk (estimate).

    Per token and layer (d = compute dtype bytes): the residual stream and its norms ~6 D d;
    q, k, v before and after RoPE plus the attention output ~(3 H + 3 KV) Dh d; the attention
    matrix as f32 scores, f32 exps and d probabilities H L (8 + d) (no flash attention here);
    the MLP's gate, up, silu and product 4 F d. Heads / KV heads / F divide by their tensor
    shards, rows by the batch shards where they divide the rows (else replicated, as the
    sharding rules do: conservative, XLA's own number is lower). What the backward pass keeps
    follows the remat policy:
    none = every layer's internals; dots = the projection outputs ((H + 2 KV) Dh + 2 D + 2 F) d
    per layer plus one layer recomputed; full = each layer's input D d plus one layer recomputed.
    Forward-only passes keep one layer. `logits` = vocab-sized log-softmaxes in flight (f32
    logits, log-probs and, with a backward, their gradient: 3 each), over `chunk` positions."""
    d = _dtype_bytes(mc.dtype)
    D, H, KV, Dh, F, V = (mc.hidden_size, mc.num_heads, mc.num_kv_heads, mc.head_dim, mc.intermediate_size,
                          mc.vocab_size)
    b = _shards(layout, ("batch",), (rows,))
    th, tk = _shards(layout, ("act_heads",), (H,)), _shards(layout, ("act_kv_heads",), (KV,))
    tf, tv = _shards(layout, ("act_mlp",), (F,)), _shards(layout, ("act_vocab",), (V,))
    full = 6 * D * d + (3 * H / th + 3 * KV / tk) * Dh * d + H / th * L * (8 + d) + 4 * F / tf * d
    if not backward:
        per_token = full
    elif mc.remat == "none":
        per_token = mc.num_layers * full
    elif mc.remat == "dots":
        per_token = mc.num_layers * (((H / th + 2 * KV / tk) * Dh + 2 * D + 2 * F / tf) * d) + full
    else:
        per_token = mc.num_layers * D * d + full
    trunk = rows / b * L * per_token
    span = chunk if 0 < chunk < T else T
    return int(trunk + logits * (3 if backward else 2) * rows / b * span * V / tv * 4)


def estimate(cfg: TrainConfig, target: Target) -> dict:
    """Per-device bytes of each part of the run (see the module docstring)."""
    scfg, shp = step_config(cfg), batch_shapes(cfg)
    layout = Layout(AbstractMesh(cfg.mesh.resolved_shape(target.devices), cfg.mesh.axis_names), cfg.mesh.rules)
    pol, prm = scfg.policy_model, scfg.prm_model
    abs_prm = None if cfg.prm.form == "shared" else transformer.abstract_params(prm)
    state = jax.eval_shape(lambda a, b: ts.init_state(scfg, a, b), transformer.abstract_params(pol), abs_prm)
    sh = ts.state_shardings(scfg, layout, state)
    part = {f: _tree_bytes(getattr(state, f), getattr(sh, f)) for f in
            ("policy", "prm", "policy_opt", "prm_opt", "policy_ref", "prm_ref")}
    G, K, E, P, T, R = (shp[k] for k in "GKEPTR")
    L = P + T
    qc, pc = cfg.policy, cfg.prm
    pol_groups, prm_groups = G // (qc.minibatches * qc.microbatches), G // (pc.minibatches * pc.microbatches)
    trunk_grads = pc.form != "shared"  # shared: the head alone learns, the trunk is stop-gradient
    r = dict(
        policy_params=part["policy"], prm_params=part["prm"],
        policy_opt=part["policy_opt"], prm_opt=part["prm_opt"],
        policy_frozen=part["policy_ref"], prm_frozen=part["prm_ref"],
        # the scan's gradient accumulator plus one microbatch's gradient
        policy_grads=2 * part["policy"], prm_grads=2 * part["prm"],
        policy_acts=_activations(pol, layout, pol_groups * K, L, T, backward=True, logits=1,
                                 chunk=qc.logit_chunk),
        prm_acts=_activations(prm, layout, prm_groups * (K + E), L, T, backward=trunk_grads,
                              logits=2 if pc.form == "implicit" else 0, chunk=qc.logit_chunk),
    )
    # Rollout, static sampler: one sampler call's R prompts (data.rollout_prompts) keep their keys
    # once (the prefix cache, P slots), their R * K samples a cache of T slots each; plus the
    # prefill's forward activations. Continuous batching (data.rollout_slots = S): S rows of P + T
    # slots, plus the one refilled request's P-slot prefill cache and activations; when the drained
    # tail first moves into S / 2 slots (sampling._compact), both caches live for a moment: S + S / 2.
    S, m = shp["S"], layout.batch_size_multiple
    tail = sampling.tail_slots(S, m)
    rows, prefill_rows = (S + tail, 1) if S else (R * K, R)
    per_row = 2 * pol.num_layers * pol.num_kv_heads * pol.head_dim * _dtype_bytes(pol.dtype)
    cache_shards = _shards(layout, transformer.CACHE_AXES, (pol.num_layers, rows, pol.num_kv_heads, P + T,
                                                            pol.head_dim))
    r["kv_cache"] = per_row * (rows * (P + T if S else T) + prefill_rows * P) // cache_shards
    r["prefill_acts"] = _activations(pol, layout, prefill_rows, P, 1, backward=False, logits=0, chunk=0)

    state_bytes = sum(r[k] for k in ("policy_params", "prm_params", "policy_opt", "prm_opt", "policy_frozen",
                                     "prm_frozen"))
    phases = {"rollout": r["kv_cache"] + r["prefill_acts"],
              "PRM update": r["prm_grads"] + r["prm_acts"],
              "policy update": r["policy_grads"] + r["policy_acts"]}
    worst = max(phases, key=phases.get)
    if S:  # the most slots the HBM left beside the state holds, in multiples of the batch shards
        room = target.hbm_bytes - state_bytes - r["prefill_acts"] - per_row * P // cache_shards
        shp["max_slots"] = max(0, int(room * cache_shards // (1.5 * per_row * (P + T))) // m * m)  # S + S / 2 rows
    return dict(parts=r, state=state_bytes, phases=phases, worst=worst, peak=state_bytes + phases[worst],
                mesh=dict(zip(cfg.mesh.axis_names, cfg.mesh.resolved_shape(target.devices))), shapes=shp,
                remat=pol.remat, dtype=pol.dtype, policy_model=pol, prm_model=prm)


# ------------------------------------------------------------------ ahead-of-time compile
def libtpu_available() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def aot_step_memory(cfg: TrainConfig, target: Target) -> dict:
    """Compiles the dual step for the TPU slice (no TPU needed) and returns XLA's per-chip
    memory analysis in bytes."""
    # Another process on this machine may hold libtpu's lockfile; compiling needs no exclusive TPU.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    topo = topologies.get_topology_desc(platform="tpu", **target.topology)
    layout = Layout.from_config(cfg.mesh, topo.devices)
    scfg, shp = step_config(cfg), batch_shapes(cfg)
    abs_prm = None if cfg.prm.form == "shared" else transformer.abstract_params(scfg.prm_model)
    state = jax.eval_shape(lambda a, b: ts.init_state(scfg, a, b), transformer.abstract_params(scfg.policy_model),
                           abs_prm)
    G, K, E, P, T = (shp[k] for k in "GKEPT")
    S = jax.ShapeDtypeStruct
    batch = ts.Batch(S((G, P), jnp.int32), S((G, P), bool), S((G, K, T), jnp.int32), S((G, K, T), bool),
                     S((G, K, T), jnp.float32), S((G, K), jnp.float32), S((G, K), jnp.float32),
                     S((G, E, T), jnp.int32), S((G, E, T), bool))
    t0 = time.perf_counter()
    try:
        ma = ts.make_train_step(scfg, layout).lower(state, batch).compile().memory_analysis()
    except jax.errors.JaxRuntimeError as e:
        # The TPU compiler itself refuses a program that cannot fit the chip: keep its numbers.
        m = re.search(r"HLO temporaries \(([\d.]+)G\) exceeds available HBM \(([\d.]+)G\)", str(e))
        if not m:
            raise
        return dict(refused=True, temp=float(m.group(1)) * GIB, available=float(m.group(2)) * GIB,
                    compile_s=time.perf_counter() - t0)
    out = dict(argument=ma.argument_size_in_bytes, output=ma.output_size_in_bytes, alias=ma.alias_size_in_bytes,
               temp=ma.temp_size_in_bytes, compile_s=time.perf_counter() - t0)
    out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out


# ------------------------------------------------------------------ report
def _g(b: float) -> str:
    return f"{b / GIB:8.3f}"


def report(cfg: TrainConfig, target: Target, est: dict, aot: dict | str | None) -> tuple[list[str], int]:
    """(lines of the table, bytes needed per device: the basis of the fit decision)."""
    p = est["parts"]
    pm, qm = est["policy_model"], est["prm_model"]
    n_params = lambda mc: sum(math.prod(s.shape) for s in jax.tree.leaves(transformer.abstract_params(mc)))
    s = est["shapes"]
    lines = [
        f"target: {target.name}, {target.hbm_bytes / GIB:g} GiB per device; mesh "
        + " x ".join(f"{k}={v}" for k, v in est["mesh"].items()),
        f"policy: {cfg.model.policy} ({pm.family}, {n_params(pm) / 1e9:.2f}B params); PRM ({cfg.prm.form}): "
        f"{cfg.model.prm or cfg.model.policy} ({n_params(qm) / 1e9:.2f}B); {est['dtype']}, remat={est['remat']}",
        f"batch: {s['G']} prompts x ({s['K']} rollouts + {s['E']} experts), prompt {s['P']} + response {s['T']} "
        f"tokens; rollout of {s['N']} prompts x {s['K']}" + (f", {s['R']} prompts per sampler call" if s['R'] < s['N'] else "")
        + (f", continuous batching in {s['S']} decode slots (at most {s['max_slots']} fit)" if s["S"] else ""),
        "",
        f"{'per device, GiB':34s}{'policy':>9s}{'PRM':>9s}",
        f"{'params':34s}{_g(p['policy_params'])} {_g(p['prm_params'])}",
        f"{'optimizer (AdamW mu + nu)':34s}{_g(p['policy_opt'])} {_g(p['prm_opt'])}",
        f"{'frozen reference copies':34s}{_g(p['policy_frozen'])} {_g(p['prm_frozen'])}",
        f"{'gradients (accumulator + micro)':34s}{_g(p['policy_grads'])} {_g(p['prm_grads'])}",
        f"{'activations, update (estimate)':34s}{_g(p['policy_acts'])} {_g(p['prm_acts'])}",
        f"{'KV cache + prefill, rollout':34s}{_g(p['kv_cache'] + p['prefill_acts'])} {'-':>8s}",
        "",
        f"state (params + optimizer + frozen): {est['state'] / GIB:.3f} GiB; phases on top: "
        + ", ".join(f"{k} {v / GIB:.3f}" for k, v in est["phases"].items()),
        f"estimated peak: {est['peak'] / GIB:.3f} GiB ({est['worst']}); activations assume remat={est['remat']} "
        "(none: all layers' internals kept; dots: projection outputs kept; full: layer inputs kept)",
    ]
    need = est["peak"]
    rollout = est["state"] + est["phases"]["rollout"]  # the rollout is never compiled here: its estimate stays
    if isinstance(aot, dict) and aot.get("refused"):
        lines.append(f"AOT dual step: XLA refuses to compile it for one chip (after {aot['compile_s']:.0f}s): HLO "
                     f"temporaries {aot['temp'] / GIB:.2f} GiB exceed the {aot['available'] / GIB:.2f} GiB of HBM "
                     "it can use")
        # XLA's temporaries on top of the state, and at least as far over as XLA says
        need = max(est["state"] + aot["temp"], target.hbm_bytes + aot["temp"] - aot["available"], rollout)
        lines.append(f"needed per device: {need / GIB:.3f} GiB (max of XLA's temporaries on the state and the "
                     "rollout estimate)")
    elif isinstance(aot, dict):
        lines.append(f"AOT dual step (XLA memory analysis per chip, compiled in {aot['compile_s']:.0f}s): "
                     f"arguments {aot['argument'] / GIB:.3f} + outputs {aot['output'] / GIB:.3f} - aliased "
                     f"{aot['alias'] / GIB:.3f} + temp {aot['temp'] / GIB:.3f} = peak {aot['peak'] / GIB:.3f} GiB")
        need = max(aot["peak"], rollout)
        lines.append(f"needed per device: {need / GIB:.3f} GiB (max of the AOT step and the rollout estimate)")
    elif aot:
        lines.append(f"AOT: {aot}")
    verdict = "fits" if need <= target.hbm_bytes else f"does NOT fit ({(need - target.hbm_bytes) / GIB:.2f} GiB over)"
    lines.append(f"{verdict}: {need / GIB:.3f} of {target.hbm_bytes / GIB:g} GiB per device")
    return lines, need


class PlanRefused(RuntimeError):
    """The run cannot fit: one line saying by how much."""


def check_fits(cfg: TrainConfig, target: Target) -> dict:
    """The estimate alone (fast, no compile): raises PlanRefused when the peak exceeds HBM.
    The training loop can call it before placing anything on the devices."""
    est = estimate(cfg, target)
    if est["peak"] > target.hbm_bytes:
        raise PlanRefused(_refusal(est["peak"], target, est))
    return est


def _refusal(need: int, target: Target, est: dict) -> str:
    s = est["shapes"]
    hint = (f"; the rollout's KV cache is the largest phase: data.rollout_slots={s['S']}, at most {s['max_slots']} "
            "fit" if s["S"] and est["worst"] == "rollout" else "")
    return (f"does not fit: needs {need / GIB:.2f} GiB per device, {target.name} has "
            f"{target.hbm_bytes / GIB:g} GiB: {(need - target.hbm_bytes) / GIB:.2f} GiB over{hint}")


def run(cfg: TrainConfig, target: Target, aot: bool = True) -> int:
    """Prints the plan; returns 0 when it fits, 1 (after one refusal line on stderr) when not."""
    import sys

    est = estimate(cfg, target)
    aot_result: dict | str | None = None
    if target.topology is None:
        aot_result = None
    elif not aot:
        aot_result = "skipped (--no-aot)"
    elif not libtpu_available():
        aot_result = "libtpu not installed (pip install -e '.[tpu]')"
    else:
        try:
            aot_result = aot_step_memory(cfg, target)
        except Exception as e:  # the estimate still stands; say why the compile gave nothing
            aot_result = f"compile failed ({type(e).__name__}: {str(e).strip().splitlines()[0][:200]})"
    lines, need = report(cfg, target, est, aot_result)
    print("\n".join(lines), flush=True)
    if need > target.hbm_bytes:
        print(f"repirl plan: error: {_refusal(need, target, est)}", file=sys.stderr)
        return 1
    return 0
