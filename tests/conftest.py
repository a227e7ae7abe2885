"""8 emulated CPU devices (set before jax is imported anywhere), offline hub, shared fixtures."""
import os

# LLVM's -O0 for XLA's CPU kernels: the tests compile far more than they run (a 2-step tiny
# `repirl train`: 35 -> 24 s; test_sampling + test_checkpoint: 241 -> 182 s), and the programs are
# the same HLO (results agree up to float rounding, every comparison is within one setting).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
                           " --xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["HF_HUB_OFFLINE"] = "1"

import jax  # noqa: E402
import pytest  # noqa: E402

from tests.helpers import save_tiny_hf  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
    """name -> (HF directory, torch model) for each tiny random config in helpers.TINY_CONFIGS."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = save_tiny_hf(name, str(tmp_path_factory.mktemp(name)))
        return cache[name]

    return get


@pytest.fixture(scope="session")
def smollm2():
    """(cfg, params, tokenizer, hf dir) of the packaged SmolLM2-135M-Instruct, float32."""
    from repirl_jax import models

    path = models.smollm2_dir()
    cfg, params = models.load(path)
    return cfg, params, models.load_tokenizer(path), path


@pytest.fixture(scope="session")
def subprocess_env(tmp_path_factory):
    """os.environ plus one persistent XLA compilation cache for the `repirl train` subprocesses of
    this test session: they all run configs/tiny_cpu.py, so only the first one compiles."""
    cache = str(tmp_path_factory.mktemp("xla_cache"))
    return {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def pytest_collection_modifyitems(config, items):
    """Tests marked slow (each a minute or more here) run first: `make test`'s two xdist workers
    then end on short tests instead of one worker finishing a long one alone (longest first)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
