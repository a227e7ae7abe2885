"""Exact resume: save mid-run, restore (also onto a mesh), continue: bitwise what an uninterrupted
run gives. Keep-last-N, and a save interrupted mid-write is never used."""
import os

import jax
import numpy as np
import pytest

from repirl_jax import checkpoint
from repirl_jax import train_step as ts
from repirl_jax.config import MeshConfig
from repirl_jax.sharding import Layout
from tests.helpers import trees_equal as leaves_equal
from tests.test_train_step import fresh_params, step_config, synthetic_batch


@pytest.fixture(scope="module")
def run():
    cfg = step_config(form="implicit", loss="repirl")  # prm_ref and rng both in the state
    rng = np.random.RandomState(7)
    batches = [synthetic_batch(rng) for _ in range(4)]
    return cfg, ts.make_train_step(cfg), batches


def test_resume_is_bitwise_identical(run, tmp_path):
    cfg, step, batches = run
    state = ts.init_state(cfg, fresh_params(0), fresh_params(1))
    ck = checkpoint.Checkpointer(str(tmp_path), keep=2)
    for i, b in enumerate(batches):
        state, _ = step(state, b)
        if i == 1:
            ck.save(2, state, {"cursor": 2, "metrics": [{"x": 1.5}]})
    ck.close()
    uninterrupted = state

    ck = checkpoint.Checkpointer(str(tmp_path))
    assert ck.latest_step() == 2
    template = ts.init_state(cfg, fresh_params(0), fresh_params(1))
    resumed, extras = ck.restore(checkpoint.abstract_like(template))
    assert extras == {"cursor": 2, "metrics": [{"x": 1.5}]} and int(resumed.step) == 2
    for b in batches[extras["cursor"]:]:
        resumed, _ = step(resumed, b)
    assert leaves_equal(resumed, uninterrupted)


def test_restore_onto_a_mesh(run, tmp_path):
    cfg, step, batches = run
    state, _ = step(ts.init_state(cfg, fresh_params(0), fresh_params(1)), batches[0])
    ck = checkpoint.Checkpointer(str(tmp_path), async_save=False)
    ck.save(1, state, {})
    layout = Layout.from_config(MeshConfig(shape=(2, 2, 2)))
    sharded_step = ts.make_train_step(cfg, layout)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state,
                            sharded_step.state_shardings)
    restored, _ = ck.restore(abstract)
    ck.close()
    wq = restored.policy["layers"]["wq"]
    assert wq.sharding.spec == layout.spec(("layers", "embed", "heads", "head_dim"), wq.shape)
    assert leaves_equal(restored, state)


def test_keep_last_and_interrupted_write_is_ignored(run, tmp_path):
    cfg, step, batches = run
    state = ts.init_state(cfg, fresh_params(0), fresh_params(1))
    ck = checkpoint.Checkpointer(str(tmp_path), keep=2, async_save=False)
    for s in (1, 2, 3):
        ck.save(s, state, {"s": s})
    ck.close()
    steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
    assert steps == [2, 3]
    # a save killed mid-write leaves only orbax's temporary directory behind
    tmp = tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp-1234567"
    (tmp / "state").mkdir(parents=True)
    (tmp / "state" / "garbage").write_bytes(b"\0" * 10)
    ck = checkpoint.Checkpointer(str(tmp_path))
    assert ck.latest_step() == 3
    _, extras = ck.restore(checkpoint.abstract_like(state))
    assert extras == {"s": 3}
    ck.close()
    with pytest.raises(FileNotFoundError, match="no finished checkpoint"):
        checkpoint.Checkpointer(str(tmp_path / "empty")).restore(checkpoint.abstract_like(state))


def test_asyncio_reports_of_our_checkpoints_abandoned_reads_are_dropped(tmp_path, caplog):
    """A failed restore leaves tensorstore futures and orbax gathers whose errors nobody retrieves;
    asyncio logs each with its traceback when it is collected (in some runs, not others). Those of
    our checkpoint directory are dropped; any other stays."""
    import asyncio
    import gc

    ck = checkpoint.Checkpointer(str(tmp_path))

    def abandon(message):
        loop = asyncio.new_event_loop()
        fut = loop.create_future()
        fut.set_exception(ValueError(message))
        del fut
        gc.collect()
        loop.close()

    with caplog.at_level("ERROR", logger="asyncio"):
        abandon(f'OUT_OF_RANGE: Error reading "w/0.0" in OCDBT database at local file "{ck.dir}/4/state/"')
        assert not [r for r in caplog.records if r.name == "asyncio"]
        abandon("someone else's error")
        assert [r.getMessage() for r in caplog.records if r.name == "asyncio"][0].startswith(
            "Future exception was never retrieved")
    ck.close()
