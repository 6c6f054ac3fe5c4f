#!/usr/bin/env bash
# Stage-2 continual training with memory, end to end (needs the stage-1 model of
# scripts/train-stage1.sh):
#   1. scripts/get-knowledge.sh               fact tables → knowledge/ (committed; rebuilt only if missing)
#   2. tools/knowledge/synthetic.py           invented facts → data/knowledge-synth/ (60,000; the ask-only
#                                             recipe: 200,000 → data/knowledge-synth-ask/, -ask-rel/); the training
#                                             knowledge base (the config's memory.kb) = knowledge/kb.jsonl + theirs
#   3. m3 data tokenize                       knowledge/train.jsonl + invented + Moby-Dick → the config's data.dir
#   4. m3 train -c CONFIG (default configs/stage2-tiny8.toml; resumes when a run exists) → its [output] dir
#   5. m3 plot                                the loss curves                   → runs/stage2-tiny/loss.svg
# Each step is skipped when its output is already there, so the script can be rerun after an
# interruption (training continues from its last checkpoint). Usage: scripts/train-stage2.sh [CONFIG]
set -euo pipefail
cd "$(dirname "$0")/.."
config="${1:-configs/stage2-tiny8.toml}"
M3=${M3:-build/release/m3}  # M3=/path/to/m3 trains with another build
[[ -x $M3 ]] || { scripts/setup.sh; scripts/build.sh release; }
init=$(sed -n 's/^init = "\([^"]*\)".*/\1/p' "$config" | head -1)
[[ -f $init ]] || { echo "$init is missing: run scripts/train-stage1.sh first" >&2; exit 1; }
[[ -f knowledge/kb.jsonl ]] || scripts/get-knowledge.sh
[[ -f data/corpus/moby-dick.jsonl ]] || scripts/get-data.sh data/corpus
# The config's dataset and knowledge base; the ask-only recipe (configs/stage2-tiny8-ask.toml) has
# its own invented facts, the others share data/knowledge-synth.
ds=$(sed -n '/^\[data\]/,/^\[/s/^dir = "\([^"]*\)".*/\1/p' "$config" | head -1)
kb=$(sed -n 's/^kb = "\([^"]*\)".*/\1/p' "$config" | head -1)
# data/tokens/stage2-ask-rel: the same facts and knowledge base, each ask document of one relation.
ask_args=(--facts 200000 --recall-share 0.15 --ask-share 0.7 --copy-docs 5000 --seed 778 --questions 3000)
case $ds in
  data/tokens/stage2-ask) synth=data/knowledge-synth-ask; synth_args=("${ask_args[@]}") ;;
  data/tokens/stage2-ask-rel) synth=data/knowledge-synth-ask-rel; synth_args=("${ask_args[@]}" --ask-one-relation) ;;
  *) synth=data/knowledge-synth; synth_args=() ;;
esac
if [[ ! -f $synth/train.jsonl ]]; then
  echo "== invented facts"
  /usr/bin/python3 tools/knowledge/synthetic.py --knowledge knowledge --out "$synth" "${synth_args[@]}"
fi
if [[ ! -f $kb/synthetic-kb.jsonl ]]; then
  mkdir -p "$kb"
  cp knowledge/kb.jsonl "$kb/kb.jsonl"
  cp "$synth/kb.jsonl" "$kb/synthetic-kb.jsonl"
fi
if [[ ! -f $ds/dataset.json ]]; then
  echo "== tokenize the knowledge text"
  rm -rf "$ds"
  $M3 data tokenize knowledge/train.jsonl "$synth/train.jsonl" data/corpus/moby-dick.jsonl -m "$init" \
    -o "$ds" --val-fraction 0.02
fi
run=$(sed -n 's/^dir = "\(runs\/[^"]*\)".*/\1/p' "$config" | head -1)
echo "== train stage 2 ($config → $run)"
if [[ -f $run/config.toml ]]; then
  $M3 train -c "$config" --resume
else
  $M3 train -c "$config"
fi
$M3 plot "$run/log.csv" -o "$run/loss.svg" --title "stage 2: $(basename "$run")" --smooth 20
