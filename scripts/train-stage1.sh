#!/usr/bin/env bash
# Stage-1 pretraining from scratch on the real corpus, end to end:
#   1. scripts/get-data.sh                  fetch and clean the sources   → data/corpus/*.jsonl
#   2. m3 tokenizer train                   a 4096-piece BPE vocabulary  → data/tokens/stage1-v4096.tokenizer.model
#   3. m3 data tokenize                     shards + 0.5% validation     → data/tokens/stage1-v4096/
#   4. m3 train -c configs/stage1-tiny.toml (resumes when a run exists)  → runs/stage1-tiny/
#   5. m3 plot                              the loss curves              → runs/stage1-tiny/loss.svg
#   6. m3 generate                          a sample from the trained model
# Each step is skipped when its output is already there, so the script can be rerun after an
# interruption (training continues from its last checkpoint). Usage: scripts/train-stage1.sh [CONFIG]
set -euo pipefail
cd "$(dirname "$0")/.."
config="${1:-configs/stage1-tiny.toml}"
M3=build/release/m3
[[ -x $M3 ]] || { scripts/setup.sh; scripts/build.sh release; }

scripts/get-data.sh data/corpus
tok=data/tokens/stage1-v4096.tokenizer.model
ds=data/tokens/stage1-v4096
mkdir -p data/tokens
if [[ ! -f $tok ]]; then
  echo "== tokenizer: 4096 pieces"
  $M3 tokenizer train data/corpus/*.jsonl --vocab 4096 -o "$tok"
fi
if [[ ! -f $ds/dataset.json ]]; then
  echo "== tokenize the corpus"
  rm -rf "$ds"
  $M3 data tokenize data/corpus/*.jsonl --tokenizer "$tok" -o "$ds" --val-fraction 0.005
fi
run=$(sed -n 's/^dir = "\(runs\/[^"]*\)".*/\1/p' "$config" | head -1)
echo "== train ($config → $run)"
if [[ -f $run/config.toml ]]; then
  $M3 train -c "$config" --resume
else
  $M3 train -c "$config"
fi
$M3 plot "$run/log.csv" -o "$run/loss.svg" --title "stage 1: $(basename "$run")" --smooth 20
echo "== sample"
$M3 generate -m "$run/model.gguf" -p "The history of the United States" -n 64 --temp 0.8 --seed 1
