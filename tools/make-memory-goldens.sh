#!/usr/bin/env bash
# Regenerates the memory writer's test data under tests/data/ (checked by tests/test_memory_writer.cpp):
#   1. test-mem4.gguf: a memory3-test model with 4 layers, 2 of them memory layers (test-f32.gguf
#      has only 1), carrying the same tokenizer;
#   2. memory-references.json: token slices of data/embedded/moby-dick.txt of lengths 1..128,
#      tokenized by test-f32.gguf's tokenizer;
#   3. golden/memory/{f32,mem4}.*: the PyTorch reference writer's memories of every reference.
# Run after changing the model format, the test preset, the selection rule or the oracle; commit
# tests/data/ with it. Needs test-f32.gguf (tools/make-test-goldens.sh) and an m3 binary.
set -euo pipefail
cd "$(dirname "$0")/.."
M3=${M3:-build/release/m3}
D=tests/data
mkdir -p $D/golden/memory
$M3 init --preset memory3-test --layers 4 --tokenizer $D/test-tokenizer.model --seed 21 -o $D/test-mem4.gguf
/usr/bin/python3 tools/reference/memory_writer.py --model $D/test-f32.gguf \
  --make-references data/embedded/moby-dick.txt --out-references $D/memory-references.json
for m in f32 mem4; do
  /usr/bin/python3 tools/reference/memory_writer.py --model $D/test-$m.gguf --references $D/memory-references.json \
    --out $D/golden/memory --name $m
done
