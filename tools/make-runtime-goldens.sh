#!/usr/bin/env bash
# Regenerates the memory-augmented forward's test data (checked by tests/test_session.cpp):
#   1. tests/data/test-rt.gguf: memory3-test with 4 layers (2 memory layers) and a 512-position
#      context, so that a prompt of 200 tokens (4 chunks) fits after the prefix and the
#      128-position memory window; the test tokenizer;
#   2. tests/data/golden/runtime/: the PyTorch reference's memories of 8 references and the logits
#      of the prompt read chunk by chunk with them (tools/reference/memory_forward.py).
# Run after changing the model format, the test preset, the read rules or the oracle.
set -euo pipefail
cd "$(dirname "$0")/.."
M3=${M3:-build/release/m3}
D=tests/data
$M3 init --preset memory3-test --layers 4 --context 512 --tokenizer $D/test-tokenizer.model --seed 31 -o $D/test-rt.gguf
/usr/bin/python3 tools/reference/memory_forward.py --model $D/test-rt.gguf --text data/embedded/moby-dick.txt \
  --out $D/golden/runtime --prompt-tokens 200
