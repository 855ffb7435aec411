# Two commands on a fresh machine:  `make demo`  and  `make test`  (each sets itself up first).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED := ../shared/data
SAMPLE := $(SHARED)/imagesTr/totalseg_dicom_example.nii.gz
OUT := out

.PHONY: demo test install benchmark benchmark-deep models ablation report clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch is pinned in pyproject.toml (2.13.0, the CPU build): an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	@mkdir -p $(OUT)
	@if [ -f "$(SAMPLE)" ]; then \
		ct="$(SAMPLE)"; echo "Segmenting the real CT sample $$ct (from $(SHARED))"; \
	else \
		echo "No real CT at $(SHARED): segmenting a synthetic phantom instead"; \
		$(VENV)/bin/liverseg phantom -o $(OUT)/phantom --cases 1 >/dev/null && ct=$(OUT)/phantom/imagesTr/phantom_000.nii.gz; \
	fi; \
	$(VENV)/bin/liverseg segment "$$ct" -o $(OUT)/liver.nii.gz -o $(OUT)/liver.seg.nrrd --preview $(OUT)/liver_preview.png
	@echo "Open $(OUT)/liver.seg.nrrd or $(OUT)/liver.nii.gz in 3D Slicer over the CT; look at $(OUT)/liver_preview.png"

test: $(VENV)/.installed
	$(PY) -m pytest

benchmark: $(VENV)/.installed
	$(PY) scripts/benchmark_em.py

benchmark-deep: $(VENV)/.installed
	$(PY) scripts/benchmark_deep.py

# Retrains every shipped model from scratch (resumable: run it again after an interruption).
models: $(VENV)/.installed
	$(PY) scripts/train_models.py

# What each training lever adds to the U-Net, by leave-one-out (Resources/Models/ablation.json; resumable).
ablation: $(VENV)/.installed
	$(PY) scripts/train_models.py --ablation --jobs 2

# Resources/Models/REPORT.md, REPORT.png and measured.json from the shipped models.
report: $(VENV)/.installed
	$(PY) scripts/report_models.py

clean:
	rm -rf $(OUT)
