# Everything runs inside .venv, created from this project's own pyproject.toml on first use, with the training
# stack (the `train` extra: CPU torch, transformers, trl, datasets, megatron-core) so the training tests run too,
# and Ray (the `ray` extra) so the --engine ray tests run on a real cluster.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-fast lint typecheck fuzz bench docs clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,train,ray]'
	touch $(STAMP)

demo: install  ## pack the shipped sample and print the report
	$(BIN)/bestfit pack samples/ demo-out/ --config configs/cl100k-2k.toml --overwrite --verify
	$(BIN)/bestfit stats samples/ --config configs/cl100k-2k.toml --ctx 2048 --ctx 8192

test: install  ## the whole test suite (reads ../shared/corpora when present)
	$(BIN)/python -m pytest -n 2 -q

test-fast: install
	$(BIN)/python -m pytest -n 2 -q -m "not slow"

lint: install
	$(BIN)/ruff check bestfit_cli tests bench
	$(BIN)/mypy bestfit_cli

typecheck: install
	$(BIN)/mypy bestfit_cli

fuzz: install  ## many more hypothesis examples than CI runs
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q tests/test_fuzz.py tests/test_fuzz_hostile.py
	BESTFIT_KILL_TRIALS=300 $(BIN)/python -m pytest -q -s tests/test_faults.py -k random_kills

bench: install  ## benchmarks on synthetic data; results go to bench/results/ (installs the bench extra: peers)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench

docs: install  ## regenerate docs/cli.md from --help
	$(BIN)/python -m tests.gen_cli_docs > docs/cli.md

clean:
	rm -rf demo-out bench/results/tmp .pytest_cache .hypothesis
