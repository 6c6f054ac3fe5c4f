#!/usr/bin/env bash
# Stage-1 pretraining from scratch on the real corpus, end to end:
#   1. scripts/get-data.sh                  fetch and clean the sources   → data/corpus/*.jsonl
#   2. m3 tokenizer train                   a 4096-piece BPE vocabulary  → data/tokens/stage1-v4096.tokenizer.model
#   3. m3 data tokenize                     shards + 0.5% validation     → the config's [data] dir:
#        data/tokens/stage1-v4096  the corpus (configs/stage1-tiny.toml)
#        data/tokens/stage1-mix    the corpus without dictionaries + invented facts (configs/stage1-tiny8.toml)
#   4. m3 train -c CONFIG (resumes when a run exists)  → the config's [output] dir
#   5. m3 plot                              the loss curves              → RUN/loss.svg
#   6. m3 generate                          a sample from the trained model
# Each step is skipped when its output is already there, so the script can be rerun after an
# interruption (training continues from its last checkpoint). Usage: scripts/train-stage1.sh [CONFIG]
set -euo pipefail
cd "$(dirname "$0")/.."
config="${1:-configs/stage1-tiny8.toml}"
M3=${M3:-build/release/m3}  # M3=/path/to/m3 trains with another build
[[ -x $M3 ]] || { scripts/setup.sh; scripts/build.sh release; }

scripts/get-data.sh data/corpus
tok=data/tokens/stage1-v4096.tokenizer.model
ds=$(sed -n 's/^dir = "\(data\/tokens\/[^"]*\)".*/\1/p' "$config" | head -1)
if [[ ! -f $ds/dataset.json ]]; then
  rm -rf "$ds"
  case "$ds" in
    data/tokens/stage1-v4096)
      echo "== tokenize the corpus"
      $M3 data tokenize data/corpus/*.jsonl --tokenizer "$tok" -o "$ds" --val-fraction 0.005 ;;
    data/tokens/stage1-mix)
      # The demo model's stage 1: the corpus without the two dictionaries, the trained facts and
      # 100,000 invented facts (a seed of their own: none is one of stage 2's) in recall and copy
      # documents, so that copying from the context is learned before stage 2.
      [[ -f knowledge/train.jsonl ]] || scripts/get-knowledge.sh
      echo "== invented facts for stage 1"
      /usr/bin/python3 tools/knowledge/synthetic.py --knowledge knowledge --out data/knowledge-synth-s1 \
        --facts 100000 --copy-docs 50000 --seed 4242 --id-prefix synth1
      echo "== tokenize the corpus and the invented facts"
      $M3 data tokenize data/corpus/{brown,devil,foldoc,fortunes,jargon,moby-dick,sotu}.jsonl knowledge/train.jsonl \
        data/knowledge-synth-s1/train.jsonl --tokenizer "$tok" -o "$ds" --val-fraction 0.005 ;;
    *) echo "$config: no recipe for the dataset $ds" >&2; exit 1 ;;
  esac
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
