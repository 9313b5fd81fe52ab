# Two commands on a fresh machine: `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# tensorflow-cpu where no NVIDIA driver is present, tensorflow[and-cuda] where one is.
TF_EXTRA ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
DEMO_DATA ?= demo_data
DEMO_RUN ?= demo_runs

.PHONY: install demo test clean

# tensorflow-serving-api (TF-Serving protos for export warmup and serving_client) goes in with --no-deps: it
# requires the full `tensorflow` wheel, which would replace tensorflow-cpu; grpcio and protobuf come with TF.
$(VENV)/.installed-$(TF_EXTRA): setup.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile -e ".[$(TF_EXTRA),test,serving]"
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile --no-deps "tensorflow-serving-api>=2.21,<2.22"
	# Byte-compiled on every core at once (pip compiles one file at a time: ~20 s longer on 2 cores). Without .pyc
	# files `import tensorflow` takes twice as long where Python may not write them (PYTHONDONTWRITEBYTECODE).
	# Packages' own test files (a third of the files, never imported here) are left out. compileall exits 1 when
	# any file of any package fails to compile (some ship templates or Python 2 files); pip ignores those too.
	$(PY) -m compileall -q -j 0 -x '/tests?/|_test\.py$$' "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" > /dev/null || true
	rm -f $(VENV)/.installed-*
	touch $@

install: $(VENV)/.installed-$(TF_EXTRA)

demo: install
	# Brain-template CT perfusion simulator: training cases without the 4D series (the model reads the maps), test
	# cases with it (predict can make the maps from it); the difficulty table compares the data's difficulty with ISLES 2018.
	$(PY) -m strokenet_tf.data.synthesize --output_dir $(DEMO_DATA) --num_cases 24 --seed 0 --split TRAINING --nopwi --workers 2
	# The 2 test cases are written in the background while the difficulty table is computed (~20 s less on 2 cores).
	$(PY) -m strokenet_tf.data.synthesize --output_dir $(DEMO_DATA) --num_cases 2 --seed 1 --split TESTING --workers 1 > $(DEMO_DATA)/testing.log 2>&1 & \
	$(PY) -m strokenet_tf.data.difficulty --data_dir $(DEMO_DATA) --output $(DEMO_DATA)/difficulty.json; status=$$?; \
	wait $$! || status=1; cat $(DEMO_DATA)/testing.log; exit $$status
	# Training: folds 0 and 1 of 5 with the demo recipe. cross_validate runs train's loop for each fold (the same
	# flags, run folders, checkpoints, TensorBoard and HParams as `strokenet_tf.train --fold=K`), scores each fold
	# on the cases it held out beside the threshold baseline fitted on its training cases, and fits the ensemble's
	# calibration on the folds' out-of-fold probabilities.
	$(PY) -m strokenet_tf.cross_validate --flagfile=experiments/demo.flags --data_dir=$(DEMO_DATA) --model_dir=$(DEMO_RUN)/cv --folds=0,1
	# One run (fold 0) on a test case: NIfTI outputs in the input geometry, montage, perfusion report.
	$(PY) -m strokenet_tf.predict --model=$(DEMO_RUN)/cv/fold_0 --input=$(DEMO_DATA)/TESTING/case_1 --output_dir=$(DEMO_RUN)/predictions --overwrite --noprogress
	# The ensemble of both folds (mirrored, calibrated) as one TF-Serving SavedModel, then predict with it.
	# Left to the README to keep the demo short: evaluate, baselines, benchmarks, the single-run export.
	$(PY) -m strokenet_tf.export --model=$(DEMO_RUN)/cv --export_base=$(DEMO_RUN)/export --model_name=strokenet_ensemble --version=1 --overwrite --warmup_depths=2
	$(PY) -m strokenet_tf.predict --model=$(DEMO_RUN)/export/strokenet_ensemble/1 --input=$(DEMO_DATA)/TESTING --output_dir=$(DEMO_RUN)/predictions_ensemble --overwrite --noprogress

test: install
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) $(DEMO_DATA) $(DEMO_RUN)
