"""The step and iteration benchmarks at toy sizes: JSON keys, and the FLOP count by hand."""
import json
import types

from benchmarks import iteration, step


def test_model_flops_by_hand():
    cfg = types.SimpleNamespace(hidden_size=4, intermediate_size=8, num_layers=1, num_heads=2, num_kv_heads=1,
                                head_dim=2, vocab_size=10)
    # N = 4*2*2 (q) + 2*4*1*2 (k, v) + 2*2*4 (o) + 3*4*8 (mlp) = 144; S = P + T = 5
    # fwd(B) = 2*144*5*B + 4*2*2*B*(5*6/2) = 1680 B;  lm(B) = 2*10*4*3*B = 240 B;  head(B) = 2*4*3*B = 24 B
    # policy = 3*(fwd(2) + lm(2)) = 11520;  prm = 4*(fwd(3) + head(3)) + fwd(2) + head(2) = 20448 + 3408
    f = step.model_flops(cfg, G=1, K=2, E=1, P=2, T=3)
    assert f == dict(policy=11520, prm=23856, total=35376)
    assert step.model_flops(cfg, G=1, K=2, E=1, P=2, T=3, prm_loss="none") == dict(policy=11520, prm=0, total=11520)


def test_step_bench_small(tmp_path):
    out = tmp_path / "step.json"
    r = step.run(str(out), reps=1, small=True, G=2, K=2, E=1, P=8, T=16, micro=1, profile=False)
    saved = json.loads(out.read_text())
    for k in ("mfu", "step_s", "tokens_per_s", "matmul_peak_flops", "full"):
        assert k in saved, k
    assert r["mfu"] > 0 and r["step_s"] > 0
    assert r["full"]["model_flops"] == step.model_flops(
        step.models_config(step.TINY), G=2, K=2, E=1, P=8, T=16)


def test_scaling_markdown_from_rows():
    rows = [dict(G=2, K=4, GK=8, T=t, step_s=t / 100, compile_s=1.0, tflop=t / 1000, mfu=0.5, tokens_per_s=1.0)
            for t in (128, 256)] + [dict(G=4, K=4, GK=16, T=256, step_s=5.0, compile_s=1.0, tflop=0.5, mfu=0.5,
                                         tokens_per_s=1.0)]
    md = step.scaling_markdown(dict(machine="m", dtype="float32", matmul_peak_flops=1e11, model="x", K=4, E=1, P=64,
                                    T_gk=256, rows=rows, cmd=step.SCALING_CMD))
    assert md.startswith("# Dual-step scaling") and step.SCALING_CMD in md
    assert "| 8 | 256 | 2.56 | 2.00 | 2.00 |" in md and "| 16 | 256 | 5.00 | 1.95 |" in md


def test_iteration_bench_small(tmp_path):
    out = tmp_path / "it.json"
    r = iteration.run(str(out), small=True, G=2, K=2, T=16, micro=1, sides=("ours", "repirl"))
    saved = json.loads(out.read_text())
    for k in ("ours_s", "repirl_s", "ours", "repirl"):
        assert k in saved, k
    assert r["ours"]["step_ok"] == 1.0 and r["repirl"]["step_ok"] == 1.0


def test_sampler_gemm_floor_runs_the_model_matmuls():
    import jax
    import numpy as np

    from benchmarks import sampler
    from repirl_jax import models

    cfg = models.ModelConfig(**step.TINY)
    params = models.init_params(cfg, jax.random.key(0))
    t = sampler.gemm_floor_s(cfg, params, batch=4, steps=8, reps=1)
    assert 0 < t < 60
    # the floor's FLOPs: the weight part of flops_per_token (context 0 = no attention)
    D, F, L, H, K, Dh, V = 32, 64, 2, 4, 2, 8, 256
    weights = L * (D * H * Dh + 2 * D * K * Dh + H * Dh * D + 3 * D * F) + V * D
    assert sampler.flops_per_token(cfg, 0) == 2 * weights
    assert np.isclose(sampler.flops_per_token(cfg, 10) - sampler.flops_per_token(cfg, 0), 2 * L * 2 * H * Dh * 10)


def test_attention_bench_small(tmp_path):
    from benchmarks import attention

    res = attention.run(str(tmp_path / "a.json"), reps=1, B=1, L=64, H=2, K=1, Dh=8)
    assert res["n_blocks"] == 2 and res["one_block_ms"] > 0 and res["blocks_ms"] > 0
    assert json.loads((tmp_path / "a.json").read_text())["speedup"] == res["speedup"]


def test_rollout_bench_small(tmp_path):
    """Static vs continuous on the counting model: the drawn lengths come out, the tokens agree,
    reusing freed slots computes fewer positions, and moving the drained tail into fewer slots fewer still."""
    from benchmarks import rollout

    r = rollout.run(str(tmp_path / "r.json"), small=True, requests=12, slots=4, chunk=4)
    saved = json.loads((tmp_path / "r.json").read_text())
    for k in ("slot_utilisation", "static_slot_utilisation", "ratio", "identical", "chunked_ratio"):
        assert saved[k] == r[k], k
    assert r["identical"] and r["lengths_as_drawn"] and r["max_logprob_diff"] < 1e-5
    assert r["slot_utilisation"] > r["unshrunk_slot_utilisation"] > r["static_slot_utilisation"]
    assert (r["static"]["useful_tokens"] == r["continuous"]["useful_tokens"] == r["chunked"]["useful_tokens"]
            == r["unshrunk"]["useful_tokens"])
    for s in ("static", "continuous", "chunked", "unshrunk"):
        assert r[s]["kv_cache_bytes"] > 0 and r[s]["tok_s"] > 0
