"""repirl plan: per-device bytes on the config's mesh, the refusal, topology names, model shapes,
and (where libtpu is installed) the ahead-of-time compile for a TPU slice."""
import dataclasses
import json
import math

import pytest

from repirl_jax import cli, plan
from repirl_jax.config import ConfigError, MeshConfig
from repirl_jax.models.config import ModelConfig

TINY = "configs/tiny_cpu.py"


def tiny(mesh=(-1, 1, 1), **data):
    cfg = cli.load_config(TINY, [])
    return dataclasses.replace(cfg, mesh=MeshConfig(shape=mesh), data=dataclasses.replace(cfg.data, **data))


def test_cli_fits_and_refuses(capsys):
    assert cli.main(["plan", "--config", TINY, "--devices", "8", "--hbm-gb", "16"]) == 0
    out = capsys.readouterr().out
    assert "fits:" in out and "params" in out and "KV cache" in out and "mesh data=8 x fsdp=1 x tensor=1" in out

    assert cli.main(["plan", "--config", TINY, "--devices", "8", "--hbm-gb", "0.001"]) == 1
    cap = capsys.readouterr()
    err = cap.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("repirl plan: error: does not fit:") and "GiB over" in err[0]
    assert "does NOT fit" in cap.out  # the table is still printed, so the user sees what is big


@pytest.mark.parametrize("args, says", [
    (["--topology", "v9x-16"], "--topology 'v9x-16': expected FAMILY-SIZE"),
    (["--topology", "v4-24"], "unknown slice size; known: v4-8, v4-16, v4-32"),
    (["--devices", "8"], "--devices needs --hbm-gb"),
    (["--devices", "3", "--hbm-gb", "16", "--set", "mesh.shape=2,2,1"], "needs 4 devices, have 3"),
])
def test_cli_bad_input_one_line(capsys, args, says):
    assert cli.main(["plan", "--config", TINY, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("repirl plan: error:") and says in err[0], err


def test_topology_names():
    t = plan.parse_topology("v4-32")  # 32 TensorCores = 16 megacore chips = 16 JAX devices
    assert t.devices == 16 and t.hbm_bytes == 32 * plan.GIB
    assert t.topology["topology_name"] == "v4:2x2x4" and t.topology["chip_config_name"] == "megacore"
    t = plan.parse_topology("v5e-16")
    assert t.devices == 16 and t.hbm_bytes == 16 * plan.GIB and t.topology["topology_name"] == "v5e:4x4"
    assert plan.parse_topology("v5litepod-16").topology == t.topology
    t = plan.parse_topology("v5p-8")
    assert t.devices == 4 and t.hbm_bytes == 95 * plan.GIB and t.topology["topology_name"] == "v5:2x2x1"
    assert plan.parse_topology("v6e-8").hbm_bytes == 32 * plan.GIB


def test_bytes_halve_when_a_sharded_axis_doubles():
    # fsdp shards every parameter's embed dimension (64 divides 2 and 4)
    a, b = (plan.estimate(tiny((1, n, 1)), plan.devices_target(n, 16))["parts"] for n in (2, 4))
    assert a["policy_params"] == 2 * b["policy_params"]
    for k in ("prm_params", "policy_opt", "prm_opt"):  # + the replicated PRM bias and step counters
        assert a[k] == pytest.approx(2 * b[k], abs=64), k
    # data shards the rollout rows (2 prompts x oversample 2 x 2 samples) of the KV cache
    a, b = (plan.estimate(tiny((n, 1, 1), oversample=2), plan.devices_target(n, 16))["parts"] for n in (2, 4))
    assert a["kv_cache"] == 2 * b["kv_cache"] and a["policy_params"] == b["policy_params"]


def test_rollout_prompts_bound_the_kv_cache():
    # tiny_cpu: G=2 x oversample 2 = 4 prompts per step; one sampler call of 1 prompt holds a quarter
    full, one = (plan.estimate(tiny((1, 1, 1), oversample=2, rollout_prompts=r), plan.devices_target(1, 16))
                 for r in (0, 1))
    assert full["shapes"]["R"] == 4 and one["shapes"]["R"] == 1
    assert full["parts"]["kv_cache"] == 4 * one["parts"]["kv_cache"]
    assert one["phases"]["rollout"] < full["phases"]["rollout"]


def test_rollout_slots_size_the_kv_cache_and_a_slot_count_too_big_is_named(capsys):
    # tiny_cpu: prompt bucket P, 32 new tokens; continuous batching holds S rows of P + 32 slots
    # plus the refilled request's P-slot prefill cache, whatever the number of prompts, and for a
    # moment S / 2 rows more (the drained tail moving into half the slots)
    est = {S: plan.estimate(tiny((1, 1, 1), oversample=2, rollout_slots=S), plan.devices_target(1, 16)) for S in (2, 4)}
    P, T = est[2]["shapes"]["P"], est[2]["shapes"]["T"]
    mc = est[2]["policy_model"]
    per_slot = 2 * mc.num_layers * mc.num_kv_heads * mc.head_dim * 4  # keys + values, float32, per cache slot
    assert est[2]["parts"]["kv_cache"] == per_slot * (3 * (P + T) + P)
    assert est[4]["parts"]["kv_cache"] - est[2]["parts"]["kv_cache"] == 3 * per_slot * (P + T)
    # the largest slot count that fits beside the state, in multiples of the data shards (8)
    big = ["--set", "data.rollout_slots=4000000"]
    assert cli.main(["plan", "--config", TINY, "--devices", "8", "--hbm-gb", "16", *big]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.rollout_slots=4000000, at most " in err[0], err
    n = int(err[0].split("at most ")[1].split()[0])
    assert n % 8 == 0 and n > 0
    fits = ["--set", f"data.rollout_slots={n}"]
    assert cli.main(["plan", "--config", TINY, "--devices", "8", "--hbm-gb", "16", *fits, "--no-aot"]) == 0
    assert cli.main(["plan", "--config", TINY, "--devices", "8", "--hbm-gb", "16",
                     "--set", f"data.rollout_slots={n + 8}", "--no-aot"]) == 1


def test_state_bytes_are_exact_on_one_device():
    est = plan.estimate(tiny((1, 1, 1)), plan.devices_target(1, 16))
    mc = est["policy_model"]
    n = sum(math.prod(s) for s in jax_shapes(mc))
    p = est["parts"]
    assert p["policy_params"] == 4 * n and p["prm_params"] == 4 * (n + mc.hidden_size + 1)  # + PRM head
    assert p["policy_opt"] == pytest.approx(2 * 4 * n, abs=64)  # mu + nu (+ counters)


def jax_shapes(mc):
    from repirl_jax.models import transformer
    import jax

    return [s.shape for s in jax.tree.leaves(transformer.abstract_params(mc))]


def test_model_shapes_from_config_json_or_known_names(tmp_path):
    cfg = tiny()
    mc = ModelConfig(family="qwen3", vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                     num_kv_heads=2, head_dim=8, qk_norm=True)
    (tmp_path / "config.json").write_text(json.dumps(mc.to_hf()))
    got = plan.model_config(str(tmp_path), cfg)
    assert (got.family, got.num_layers, got.head_dim, got.vocab_size) == ("qwen3", 2, 8, 64)

    count = lambda m: sum(math.prod(s) for s in jax_shapes(m)) / 1e9
    q25 = plan.model_config("Qwen/Qwen2.5-3B-Instruct", cfg)
    assert q25.family == "qwen2" and q25.num_kv_heads == 2 and count(q25) == pytest.approx(3.09, abs=0.01)
    q3 = plan.model_config("/models/Qwen3-4B-Base/", cfg)
    assert q3.family == "qwen3" and q3.qk_norm and count(q3) == pytest.approx(4.02, abs=0.01)
    with pytest.raises(ConfigError, match="no known shapes for 'Llama-9B'"):
        plan.model_config("meta/Llama-9B", cfg)


def test_aot_line_without_libtpu(monkeypatch, capsys):
    monkeypatch.setattr(plan, "libtpu_available", lambda: False)
    assert plan.run(tiny(), plan.parse_topology("v5e-4")) == 0
    assert "AOT: libtpu not installed (pip install -e '.[tpu]')" in capsys.readouterr().out


@pytest.mark.skipif(not plan.libtpu_available(), reason="libtpu not installed (pip install -e '.[tpu]')")
def test_aot_compile_for_a_tpu_slice():
    cfg = tiny((1, 2, 2), max_prompt_len=16, max_new_tokens=8)
    target = plan.parse_topology("v5e-4")
    aot = plan.aot_step_memory(cfg, target)
    est = plan.estimate(cfg, target)
    # XLA's argument bytes are the state (exact in the estimate) plus the small batch
    assert est["state"] <= aot["argument"] <= 1.1 * est["state"]
    assert aot["alias"] > 0.9 * est["state"]  # the state is donated
    assert 0 < aot["peak"] < target.hbm_bytes


def test_xla_refusal_decides(capsys):
    """When the TPU compiler refuses the step (RESOURCE_EXHAUSTED), its numbers make the refusal."""
    cfg, target = tiny(), plan.parse_topology("v5e-16")
    est = plan.estimate(cfg, target)
    aot = dict(refused=True, temp=19.02 * plan.GIB, available=15.75 * plan.GIB, compile_s=9.0)
    lines, need = plan.report(cfg, target, est, aot)
    assert need - target.hbm_bytes == pytest.approx(3.27 * plan.GIB)  # 19.02 - 15.75
    assert any("XLA refuses to compile it for one chip" in line and "19.02 GiB" in line for line in lines)
    assert lines[-1].startswith("does NOT fit")


@pytest.mark.parametrize("name", ["qwen25_3b_math", "qwen3_4b_math"])
def test_paper_configs_fit_the_slice_their_docstring_names(name):
    cfg = cli.load_config(f"configs/{name}.py", [])
    est = plan.estimate(cfg, plan.parse_topology("v4-32"))
    assert est["shapes"]["R"] == 32 and est["peak"] < 32 * plan.GIB, est["peak"] / plan.GIB
    assert "--topology v4-32" in open(f"configs/{name}.py").read()
