#!/usr/bin/env bash
# The main job on the embedded default: set up, build, train a tokenizer on the embedded corpus,
# create a small Memory³-shaped model, inspect it, quantize it and generate from it.
# (The model is randomly initialised until training lands, so its text is noise: this run shows
# the engine working end to end, not a trained model.)
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
