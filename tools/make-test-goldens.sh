#!/usr/bin/env bash
# Regenerates the committed test models and the oracle's goldens under tests/data/.
#   1. a 512-piece tokenizer trained on the embedded corpus,
#   2. a random memory3-test model (f32) carrying it, and its f16/bf16/q8_0/q4_0 conversions,
#   3. for each, the PyTorch reference's logits (prefill and token-by-token) on a >100-token prompt.
# Run after changing the model format, the test preset or the oracle; commit tests/data/ with it.
set -euo pipefail
cd "$(dirname "$0")/.."
M3=${M3:-build/release/m3}
D=tests/data
mkdir -p $D/golden
$M3 tokenizer train data/embedded/moby-dick.txt --vocab 512 --seed 42 -o $D/test-tokenizer.model
$M3 init --preset memory3-test --tokenizer $D/test-tokenizer.model --seed 11 -o $D/test-f32.gguf
for t in f16 bf16 q8_0 q4_0; do $M3 quantize $D/test-f32.gguf $D/test-$t.gguf -t $t; done
for t in f32 f16 bf16 q8_0 q4_0; do
  /usr/bin/python3 tools/reference/make_goldens.py --model $D/test-$t.gguf --prompt-file $D/golden/prompt.txt \
    --out $D/golden --name $t
done
rm -f $D/golden/*.decode.npy  # equal to the prefill logits to ~1e-15 (checked by make_goldens.py)
