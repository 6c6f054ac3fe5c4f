#!/usr/bin/env bash
# The knowledge evaluation of docs/results.md: a model (default: the committed demo model) reads a
# bank of knowledge/kb.jsonl and answers every memory-only question and 500 trained ones, with
# memory (the model's memories per chunk), without memory and with RAG (5 references), then with 1
# memory and RAG with 1 reference; multiple choice on the memory-only facts; perplexity of the
# held-out text (memory-only facts) with and without memory (leakage filter 2/3 and, as stage-2
# training uses it, 0.9). Usage: scripts/eval-stage2.sh [MODEL] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
M3=${M3:-build/release/m3}
model="${1:-models/memory3-tiny-kb.gguf}"
out="${2:-out/eval-stage2}"
[[ -x $M3 ]] || { scripts/setup.sh; scripts/build.sh release; }
mkdir -p "$out"
echo "== bank of knowledge/kb.jsonl written by $model"
$M3 memorize -m "$model" --kb knowledge/kb.jsonl -o "$out/bank"
echo "== QA (exact match), multiple choice: memory / none / rag"
$M3 eval -m "$model" --bank "$out/bank" --qa knowledge/questions/memory_only.jsonl --mc knowledge/mc/memory_only.jsonl \
  --out "$out/qa"
$M3 eval -m "$model" --bank "$out/bank" --qa knowledge/questions/trained.jsonl --limit 500 --out "$out/qa-trained"
echo "== QA and multiple choice reading ONE memory per chunk (the top bm25 reference) / RAG with one reference"
$M3 eval -m "$model" --bank "$out/bank" --qa knowledge/questions/memory_only.jsonl --mc knowledge/mc/memory_only.jsonl \
  --modes memory,rag --memories 1 --rag-references 1 --out "$out/qa-1"
echo "== perplexity of knowledge/heldout.jsonl: memory / none (leakage filter 2/3, then 0.9)"
$M3 eval -m "$model" --bank "$out/bank" --perplexity knowledge/heldout.jsonl --modes memory,none --out "$out/ppl"
$M3 eval -m "$model" --bank "$out/bank" --perplexity knowledge/heldout.jsonl --modes memory,none --leakage 0.9 \
  --out "$out/ppl-0.9"
