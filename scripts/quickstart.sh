#!/usr/bin/env bash
# The main job on the embedded default: set up, build, train a tokenizer on the embedded corpus
# (data/embedded/, chapters of Moby-Dick), create a small Memory³-shaped model, inspect and
# quantize it; then pretrain a tiny model on the same text for a minute, memorize the text into a
# memory bank, search it, and generate with memory, printing which references each chunk read.
# (A minute of training on 0.4 MB gives English-shaped text, not knowledge: scripts/train-stage1.sh
# is the real 30-minute recipe.)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh release
M3=build/release/m3
mkdir -p out
echo "== m3 init: memory3-tiny with a tokenizer trained on data/embedded/"
$M3 init --preset memory3-tiny --train-tokenizer data/embedded/*.txt --vocab 1024 --seed 7 -o out/tiny-f32.gguf
echo "== m3 inspect"
$M3 inspect out/tiny-f32.gguf
echo "== m3 quantize → q8_0"
$M3 quantize out/tiny-f32.gguf out/tiny-q8_0.gguf -t q8_0
echo "== m3 tokenize"
$M3 tokenize -m out/tiny-f32.gguf -p "Call me Ishmael. <s>Reference: memory"
echo "== m3 generate (random weights: expect noise)"
$M3 generate -m out/tiny-q8_0.gguf -p "Call me Ishmael." -n 32 --seed 1 --stats
echo "== m3 data tokenize + m3 train: 200 steps of memory3-tiny on the embedded text"
rm -rf out/ds out/run out/bank
$M3 data tokenize data/embedded/moby-dick.txt -m out/tiny-f32.gguf -o out/ds --val-fraction 0.05
$M3 train --data out/ds -o out/run --preset memory3-tiny --steps 200 -b 8 --seq-len 128 --lr 3e-3 --warmup 20 \
  --eval-interval 50 --checkpoint-interval 100
echo "== m3 memorize: the embedded text as a knowledge base"
$M3 memorize -m out/run/model.gguf --kb data/embedded -o out/bank
$M3 bank info out/bank
echo "== m3 search"
$M3 search out/bank "the white whale and the harpoon" -k 3
echo "== m3 generate --bank (memories read per 64-token chunk; --memories shows which)"
$M3 generate -m out/run/model.gguf --bank out/bank -p "Queequeg and the harpooneer" -n 80 --temp 0.7 --seed 1 --memories --stats
