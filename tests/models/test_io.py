"""Weights in and out: export round trips, sharded indices, and one clear line on bad input."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import transformers

from repirl_jax import models
from repirl_jax.models import ModelLoadError
from tests.helpers import random_tokens, torch_logits
from tests.helpers import trees_equal as tree_equal


@pytest.mark.parametrize("name", ["llama_tied", "qwen2", "qwen3"])
def test_export_round_trip(tiny_hf, tmp_path, name):
    path, _ = tiny_hf(name)
    cfg, params = models.load(path)
    out = models.export_hf(cfg, params, str(tmp_path / "export"))
    # transformers loads our export and gives our logits
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).float().eval()
    toks = random_tokens(cfg.vocab_size, (2, 7))
    np.testing.assert_allclose(torch_logits(hf, toks), np.asarray(models.forward(cfg, params, toks)), atol=1e-4)
    cfg2, params2 = models.load(out)
    assert cfg2 == cfg and tree_equal(params, params2)


def test_sharded_index_round_trip(tiny_hf, tmp_path):
    path, _ = tiny_hf("llama_mha_untied")
    cfg, params = models.load(path)
    out = models.export_hf(cfg, params, str(tmp_path / "sharded"), max_shard_bytes=40_000)
    files = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
    assert len(files) > 2 and os.path.isfile(os.path.join(out, "model.safetensors.index.json"))
    cfg2, params2 = models.load(out)
    assert cfg2 == cfg and tree_equal(params, params2)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).float().eval()
    toks = random_tokens(cfg.vocab_size, (1, 5))
    np.testing.assert_allclose(torch_logits(hf, toks), np.asarray(models.forward(cfg, params, toks)), atol=1e-4)


def test_bfloat16_export_round_trip(tiny_hf, tmp_path):
    path, _ = tiny_hf("qwen3")
    cfg, params = models.load(path, dtype="bfloat16")
    out = models.export_hf(cfg, params, str(tmp_path / "bf16"))
    assert json.load(open(os.path.join(out, "config.json")))["torch_dtype"] == "bfloat16"
    cfg2, params2 = models.load(out, dtype="bfloat16")
    assert tree_equal(params, params2)


def test_export_refuses_to_overwrite_a_foreign_directory(tiny_hf, tmp_path):
    path, _ = tiny_hf("qwen3")
    cfg, params = models.load(path)
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing"):
        models.export_hf(cfg, params, str(tmp_path))
    assert (tmp_path / "precious.txt").read_text() == "keep me"


# ---------------------------------------------------------------------------- bad input
def copy_model(tiny_hf, tmp_path, name="llama_tied"):
    src, _ = tiny_hf(name)
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    return dst


def edit_config(d, **kw):
    c = json.loads((d / "config.json").read_text())
    c.update(kw)
    (d / "config.json").write_text(json.dumps(c))


def assert_one_line(excinfo, *needles):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, (n, msg)


def test_missing_directory_and_file(tmp_path):
    with pytest.raises(ModelLoadError) as e:
        models.load(str(tmp_path / "nope"))
    assert_one_line(e, "nope", "not found")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError) as e:
        models.load(str(tmp_path / "empty"))
    assert_one_line(e, "config.json", "not found")


def test_missing_weights_file(tiny_hf, tmp_path):
    d = copy_model(tiny_hf, tmp_path)
    (d / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError) as e:
        models.load(str(d))
    assert_one_line(e, str(d), "model.safetensors")


def test_unsupported_architecture_in_config(tiny_hf, tmp_path):
    d = copy_model(tiny_hf, tmp_path)
    edit_config(d, model_type="gpt_neox")
    with pytest.raises(ModelLoadError) as e:
        models.load(str(d))
    assert_one_line(e, "config.json", "model_type", "gpt_neox")


def test_config_weights_shape_mismatch(tiny_hf, tmp_path):
    d = copy_model(tiny_hf, tmp_path)
    edit_config(d, intermediate_size=72)
    with pytest.raises(ModelLoadError) as e:
        models.load(str(d))
    assert_one_line(e, "model.safetensors", "mlp.gate_proj.weight", "[70, 36]", "[72, 36]")


def test_missing_tensor(tiny_hf, tmp_path):
    d = copy_model(tiny_hf, tmp_path, "llama_mha_untied")
    edit_config(d, num_hidden_layers=4)  # the file holds 3 layers
    with pytest.raises(ModelLoadError) as e:
        models.load(str(d))
    assert_one_line(e, "model.layers.3.", "missing")


def test_truncated_safetensors(tiny_hf, tmp_path):
    d = copy_model(tiny_hf, tmp_path)
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(ModelLoadError) as e:
        models.load(str(d))
    assert_one_line(e, str(f), "truncated")


def test_index_naming_a_missing_shard(tiny_hf, tmp_path):
    path, _ = tiny_hf("llama_mha_untied")
    cfg, params = models.load(path)
    out = models.export_hf(cfg, params, str(tmp_path / "sharded"), max_shard_bytes=40_000)
    victim = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))[1]
    os.remove(os.path.join(out, victim))
    with pytest.raises(ModelLoadError) as e:
        models.load(out)
    assert_one_line(e, victim, "not found")


def write_gguf(path, arch="llama"):
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(10)
    w.add_tensor("token_embd.weight", np.zeros((10, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_unsupported_gguf_architecture(tmp_path):
    f = tmp_path / "m.gguf"
    write_gguf(f, arch="gpt2")
    with pytest.raises(ModelLoadError) as e:
        models.load(str(f))
    assert_one_line(e, str(f), "general.architecture", "gpt2")


def test_gguf_missing_tensor_and_garbage_file(tmp_path):
    f = tmp_path / "m.gguf"
    write_gguf(f)
    with pytest.raises(ModelLoadError) as e:
        models.load(str(f))
    assert_one_line(e, str(f), "missing")
    g = tmp_path / "junk.gguf"
    g.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ModelLoadError) as e:
        models.load(str(g))
    assert_one_line(e, str(g), "GGUF")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "repirl_jax.cli", *args], capture_output=True, text=True,
                          timeout=300)


def test_cli_convert_and_its_errors(tiny_hf, tmp_path):
    path, _ = tiny_hf("qwen2")
    r = run_cli("convert", path, str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    cfg, params = models.load(path)
    cfg2, params2 = models.load(str(tmp_path / "out"))
    assert cfg2 == cfg and tree_equal(params, params2)
    r = run_cli("convert", str(tmp_path / "missing"), str(tmp_path / "out2"))
    assert r.returncode == 2 and not (tmp_path / "out2").exists()
    err = [l for l in r.stderr.splitlines() if "error" in l]
    assert len(err) == 1 and "missing" in err[0], r.stderr
