#!/usr/bin/env bash
# Regenerates the training goldens under tests/data/golden/train/ with the PyTorch oracle
# (tools/reference/train_reference.py): for tests/data/test-f32.gguf and a fixed [2, 24] batch,
# the float64 loss, every parameter's gradient (grads.npy, <f4, TrainableModel order; ~0.6 MB)
# and the losses of 10 AdamW steps under the warmup-stable-decay schedule (train.json).
# Run after changing the test model (tools/make-test-goldens.sh), the oracle or the training
# hyperparameters it writes; commit tests/data/golden/train/ with it.
set -euo pipefail
cd "$(dirname "$0")/.."
/usr/bin/python3 tools/reference/train_reference.py --model tests/data/test-f32.gguf \
  --out tests/data/golden/train --B 2 --T 24 --steps 10 "$@"
