"""Sharded forward equals the single-device one; params are sharded as the rules say."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from repirl_jax import models
from repirl_jax.config import MeshConfig
from repirl_jax.sharding import Layout
from tests.helpers import random_tokens

MESHES = [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 2, 4)]


@pytest.fixture(scope="module")
def shard_model(tiny_hf):
    path, _ = tiny_hf("llama_shard")
    cfg, params = models.load(path)
    tokens = random_tokens(cfg.vocab_size, (8, 16), seed=4)
    return path, cfg, tokens, np.asarray(models.forward(cfg, params, tokens))


@pytest.mark.parametrize("shape", MESHES)
def test_sharded_forward_equals_single_device(shard_model, shape):
    path, cfg, tokens, want = shard_model
    layout = Layout.from_config(MeshConfig(shape=shape))
    _, params = models.load(path, layout=layout)  # placed straight onto the mesh
    axes = models.param_axes(cfg)
    for p, a in zip(jax.tree.leaves(params), jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple))):
        assert p.sharding.spec == layout.spec(a, p.shape)
    tok = jax.device_put(tokens, layout.sharding(("batch", "seq"), tokens.shape))
    got = models.forward(cfg, params, tok, layout=layout)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def test_rules_shard_what_they_say(shard_model):
    path, cfg, _, _ = shard_model
    layout = Layout.from_config(MeshConfig(shape=(1, 2, 4)))
    _, params = models.load(path, layout=layout)
    lp = params["layers"]
    assert lp["wq"].sharding.spec == P(None, "fsdp", "tensor")  # [L, D, H, Dh]
    assert lp["wo"].sharding.spec == P(None, "tensor", None, "fsdp")  # [L, H, Dh, D]
    assert lp["w_down"].sharding.spec == P(None, "tensor", "fsdp")  # [L, F, D]
    assert params["embed"].sharding.spec == P("tensor", "fsdp")  # [V, D]
    # each device holds 1/8 of wq, not a full copy
    shard = lp["wq"].addressable_shards[0].data
    assert shard.size * 8 == lp["wq"].size


def test_spec_drops_axes_that_do_not_divide():
    layout = Layout.from_config(MeshConfig(shape=(2, 2, 2)))
    assert layout.spec(("batch", "seq"), (8, 5)) == P(("data", "fsdp"))
    assert layout.spec(("batch", "seq"), (6, 5)) == P("data")  # 6 % 4 != 0: fsdp dropped
    assert layout.spec(("embed", "heads", "head_dim"), (64, 9, 64)) == P("fsdp")  # 9 heads: replicated
    with pytest.raises(KeyError, match="no sharding rule"):
        layout.spec(("nonsense",), (4,))


def test_mesh_config_validation():
    assert Layout.from_config(MeshConfig(shape=(2, -1, 1))).mesh.shape == {"data": 2, "fsdp": 4, "tensor": 1}
    with pytest.raises(ValueError, match="MeshConfig.shape"):
        Layout.from_config(MeshConfig(shape=(3, 1, 1)))
    with pytest.raises(ValueError, match="MeshConfig.shape"):
        MeshConfig(shape=(-1, -1, 1))
    with pytest.raises(ValueError, match="not a mesh axis"):
        MeshConfig(rules=(("batch", "pipeline"),))
