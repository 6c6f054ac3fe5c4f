#!/usr/bin/env bash
# The main job on the embedded default: set up, build, then show explicit memory at work with the
# committed demo model (models/memory3-tiny-kb.gguf: 1.9M parameters, stage 1 on public text,
# stage 2 with memory; docs/results.md has how it was trained and how it scores — it has only
# begun to read its memories):
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
echo "(this 1.9M-parameter model has barely learned to read its memories: docs/results.md — the first"
echo " three are among the few it answers with memory and not without; the fourth it gets wrong)"
ask "On which continent is Andorra?"
ask "In what year was praseodymium discovered?"
ask "On which continent is North Macedonia?"
ask "What is the capital of Burkina Faso?"
echo
echo "== m3 eval: 200 memory-only questions — with memory, without, and RAG (references as text)"
$M3 eval -m $MODEL --bank out/kb-bank --qa knowledge/questions/memory_only.jsonl --limit 200 --out out/eval
echo "(per-question answers and references: out/eval/results.json; chart: out/eval/results.svg)"
