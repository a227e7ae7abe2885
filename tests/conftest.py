"""8 emulated CPU devices (set before jax is imported anywhere), offline hub, shared fixtures."""
import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
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


def _xla_cache_dir(tmp_path_factory) -> str:
    """One persistent XLA compilation cache per test run, shared by the xdist workers (their
    basetemps are children of the run's) and the subprocesses: the same tiny programs compile in
    several tests, and on 2 cores compiling is most of the suite's time."""
    base = tmp_path_factory.getbasetemp()
    path = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "xla_cache"
    path.mkdir(exist_ok=True)
    return str(path)


@pytest.fixture(scope="session", autouse=True)
def xla_cache(tmp_path_factory):
    cache = _xla_cache_dir(tmp_path_factory)
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return cache


@pytest.fixture(scope="session")
def subprocess_env(xla_cache):
    """os.environ plus the run's persistent XLA compilation cache for the `repirl train`
    subprocesses: they all run configs/tiny_cpu.py, so only the first one compiles."""
    return {**os.environ, "JAX_COMPILATION_CACHE_DIR": xla_cache, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def pytest_collection_modifyitems(config, items):
    """Tests marked slow (each a minute or more here) run first: `make test`'s two xdist workers
    then end on short tests instead of one worker finishing a long one alone (longest first)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
