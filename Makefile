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
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[$(TF_EXTRA),test,serving]"
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps "tensorflow-serving-api>=2.21,<2.22"
	rm -f $(VENV)/.installed-*
	touch $@

install: $(VENV)/.installed-$(TF_EXTRA)

demo: install
	# Brain-template CT perfusion simulator: training cases without the 4D series (the model reads the maps), test
	# cases with it (predict can make the maps from it); the difficulty table compares the data's difficulty with ISLES 2018.
	$(PY) -m strokenet_tf.data.synthesize --output_dir $(DEMO_DATA) --num_cases 24 --seed 0 --split TRAINING --nopwi --workers 2
	$(PY) -m strokenet_tf.data.synthesize --output_dir $(DEMO_DATA) --num_cases 2 --seed 1 --split TESTING --workers 2
	$(PY) -m strokenet_tf.data.difficulty --data_dir $(DEMO_DATA) --output $(DEMO_DATA)/difficulty.json
	$(PY) -m strokenet_tf.train --flagfile=experiments/demo.flags --data_dir=$(DEMO_DATA) --model_dir=$(DEMO_RUN)/fold0
	$(PY) -m strokenet_tf.baselines --model=$(DEMO_RUN)/fold0
	$(PY) -m strokenet_tf.evaluate --model=$(DEMO_RUN)/fold0 --fold=0 --output_dir=$(DEMO_RUN)/fold0/eval_fold0 --overwrite --noprogress
	$(PY) -m strokenet_tf.predict --model=$(DEMO_RUN)/fold0 --input=$(DEMO_DATA)/TESTING/case_1 --output_dir=$(DEMO_RUN)/predictions --overwrite --noprogress
	# Ensemble path: two short folds, calibrated on their out-of-fold probabilities, exported as one SavedModel
	# (the TF-Serving export of the demo), predicted with it. The input-pipeline check, the inference benchmark and
	# the single-run export are left to the README (benchmarks.pipeline, benchmarks --quick, export
	# --model=demo_runs/fold0) to keep the demo short.
	$(PY) -m strokenet_tf.cross_validate --flagfile=experiments/ensemble_demo.flags --data_dir=$(DEMO_DATA) --model_dir=$(DEMO_RUN)/cv --folds=0,1 --noverbose
	$(PY) -m strokenet_tf.export --model=$(DEMO_RUN)/cv --export_base=$(DEMO_RUN)/export --model_name=strokenet_ensemble --version=1 --overwrite --warmup_depths=2
	$(PY) -m strokenet_tf.predict --model=$(DEMO_RUN)/export/strokenet_ensemble/1 --input=$(DEMO_DATA)/TESTING --output_dir=$(DEMO_RUN)/predictions_ensemble --overwrite --noprogress

test: install
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) $(DEMO_DATA) $(DEMO_RUN)
