# vwl_lightning: every command a person runs twice. `make run` and `make test` install what they need.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
ARGS ?=

.PHONY: install run test test-full lint bench samples clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,sweep]'
	touch $(STAMP)

# the whole job on the embedded benchmark (extra Hydra overrides: make run ARGS="+experiment=...")
run: install
	$(PY) -m vwl_lightning $(ARGS)

# the default test suite (< 25 min on 2 cores); slow tests are excluded
test: install
	$(PY) -m pytest -q

# every test, the slow ones included
test-full: install
	$(PY) -m pytest -q -m "slow or not slow"

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) bench/run_all.py

# the README's picture of the embedded benchmark
samples: install
	$(PY) -m vwl_lightning.data.synthetic grid --out docs/synthetic_samples.png

clean:
	rm -rf runs multirun outputs .pytest_cache
