#!/usr/bin/env bash
# The main job on the embedded default: set up, build, then show explicit memory at work with the
# committed demo model (models/memory3-tiny-kb.gguf: 2.6M parameters, 8 layers, stage 1 on public
# text and invented facts, stage 2 with questions whose answers are only in memory; docs/results.md
# has how it was trained and how it scores — it reads some of its memories, far from all):
#   1. memorize the knowledge base knowledge/kb.jsonl (4,191 facts from Debian's fact tables) into
#      a memory bank — one explicit memory per fact, written by the model;
#   2. ask questions about facts that are ONLY in that knowledge base (never in any training text),
#      with memory (printing the references each answer read) and without;
#   3. evaluate 200 such questions with memory, without memory and with RAG (m3 eval).
# A tour of the other commands (init, inspect, quantize, train, search) is in README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh release
M3=build/release/m3
MODEL=models/memory3-tiny-kb.gguf
mkdir -p out
echo "== the demo model"
$M3 inspect $MODEL
echo "== m3 memorize: knowledge/kb.jsonl → out/kb-bank (resumes; a finished bank is kept)"
$M3 memorize -m $MODEL --kb knowledge/kb.jsonl -o out/kb-bank
$M3 bank info out/kb-bank
ask() {  # a question, with memory (and the references read), then without
  echo
  echo "-- with memory:"
  $M3 generate -m $MODEL --bank out/kb-bank -p "Q: $1
A:" -n 16 --greedy --stop '\n' --memories
  echo "-- without memory:"
  $M3 generate -m $MODEL -p "Q: $1
A:" -n 16 --greedy --stop '\n'
}
echo "== questions about facts that are only in the knowledge base"
echo "(this 2.6M-parameter model answers 64.9% of the memory-only questions with memory and 0.9%"
echo " without: docs/results.md — the first three are among those it answers with memory and not"
echo " without; the fourth it gets wrong)"
ask "Which city does the airport code BOS serve?"
ask "What is the capital of Tatarstan?"
ask "In what year was Edgard Varese born?"
ask "What is the capital of Burkina Faso?"
echo
echo "== m3 eval: 200 memory-only questions — with memory, without, and RAG (references as text)"
$M3 eval -m $MODEL --bank out/kb-bank --qa knowledge/questions/memory_only.jsonl --limit 200 --out out/eval
echo "(per-question answers and references: out/eval/results.json; chart: out/eval/results.svg)"
