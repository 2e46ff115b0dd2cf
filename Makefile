# vwl_lightning: every command a person runs twice. `make run` and `make test` install what they need.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
ARGS ?=

.PHONY: install run test test-fast test-full lint bench samples ablation ablation-pretrained sensitivity dials refinement clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,sweep]'
	touch $(STAMP)

# the whole job on the embedded benchmark (extra Hydra overrides: make run ARGS="+experiment=...")
run: install
	$(PY) -m vwl_lightning $(ARGS)

# the unit tier: single parts, no training run or subprocess (< 1 min on 2 cores)
test-fast: install
	$(PY) -m pytest -q -m "unit and not slow"

# the default test suite (unit + integration, < 25 min on 2 cores); slow tests are excluded
test: install
	$(PY) -m pytest -q

# every test, the slow ones included
test-full: install
	$(PY) -m pytest -q -m "slow or not slow"

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) -m bench.run_all

# the README's picture of the embedded benchmark
samples: install
	$(PY) -m vwl_lightning.data.synthetic grid --out docs/synthetic_samples.png

# README's ablation (7 variants x 3 seeds, ~1 h 45 min of compute on 2 cores; resumable)
ablation: install
	$(PY) -m vwl_lightning.studies.ablation --seeds 1 2 3 --out runs/ablation -- cam.precision=32-true

# README's ablation on the ImageNet EfficientNet-Lite0 (6 variants x 3 seeds, IRN masks for two of them;
# ~2.5 h of compute on 2 cores, estimated; resumable)
ablation-pretrained: install
	$(PY) -m vwl_lightning.studies.ablation --seeds 1 2 3 --out runs/ablation_pretrained \
		--variants "plain CAM" "+ hybrid pooling" "+ VWL-L" "+ VWL-M" "VWL-L + hybrid pooling" \
		"VWL-M + hybrid pooling" --irn "plain CAM" "VWL-L + hybrid pooling" -- model=efficientnet_lite0_synthetic \
		seeds.sweep.stop=0.95

# README's K x gamma sensitivity sweep (9 runs, ~40 min on 2 cores)
sensitivity: install
	$(PY) -m vwl_lightning -m +experiment=synthetic_vwl_l 'pipeline=[classifier,cams,seeds]' \
		model.codebook.size=16,64,256 model.pool.gamma=0,2,4 logger=csv cam.precision=32-true \
		hydra.sweep.dir=runs/sensitivity

# README's dials study: 4 methods x (part sharing 1.0, 0.5) x (co-occurrence 0.8, 0.1) x 2 seeds = 32 runs,
# ~2 h of compute on 2 idle cores, plus a 3rd seed where a gain is within the spread (resumable)
dials: install
	$(PY) -m vwl_lightning.studies.dials --sharing 1.0 0.5 --cooccurrence 0.8 0.1 --seeds 1 2 --extra-seed 3 \
		--out runs/dials

# README's refinement study: CRF vs IRN masks (three IRN trunks), DeepLabV2 vs EMANet, per seed (resumable)
refinement: install
	$(PY) -m vwl_lightning.studies.refinement --seeds 1 2 3 --out runs/refinement_study

clean:
	rm -rf runs multirun outputs .pytest_cache
