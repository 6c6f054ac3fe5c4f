#!/usr/bin/env bash
# Regenerates the stage-2 (memory-augmented) training goldens under tests/data/golden/stage2/ with
# the PyTorch oracle (tools/reference/stage2_reference.py): for tests/data/test-rt.gguf (4 layers,
# 2 memory layers; tools/make-runtime-goldens.sh makes it), a fixed [2, 160] batch whose chunks
# read 0, 1, 3 or 5 of 7 references written on the fly by the same weights: the float64 loss,
# every parameter's gradient (grads.npy, <f4, TrainableModel order; ~0.95 MB), the kept indices
# and selection gaps (stage2.json), and the loss of the same batch without memories.
# The oracle checks itself against memory_writer.py / memory_forward.py / model.py before writing;
# `tools/reference/stage2_reference.py --model tests/data/test-rt.gguf --check` adds a
# finite-difference check (~1 min). Run after changing the test model, the write/read/training
# rules or the oracle; commit tests/data/golden/stage2/ with it.
set -euo pipefail
cd "$(dirname "$0")/.."
/usr/bin/python3 tools/reference/stage2_reference.py --model tests/data/test-rt.gguf \
  --out tests/data/golden/stage2 --B 2 --T 160 "$@"
