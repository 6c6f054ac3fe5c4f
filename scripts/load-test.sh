#!/usr/bin/env bash
# Load test of `m3 serve` (docs/reliability.md): memorizes the knowledge base knowledge/kb.jsonl with
# the committed demo model models/memory3-tiny-kb.gguf into a bank (resumable; a finished bank is
# reused), starts `m3 serve` on a loopback port over it and runs tools/load_test.py: 16 concurrent
# clients x 50 requests (completions and chat with memory, streaming and not, knowledge search, and
# invalid requests that must get 4xx), bounded in time. It reports p50/p99 latency, status counts,
# the server's peak RSS and whether its memory stays bounded, and exits non-zero on any 5xx other
# than 503 back-pressure, a timeout, a malformed answer or unbounded memory.
#
#   scripts/load-test.sh [load_test.py options]      e.g. --clients 32 --requests 100 --queue 8
# Environment:
#   M3        the m3 binary (default build/release/m3, built with scripts/build.sh release if missing)
#   KB_LIMIT  memorize only the first N facts (default: all 4,191)
#   BANK      the bank directory (default out/load-test/kb-bank[-N])
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL=models/memory3-tiny-kb.gguf
M3="${M3:-build/release/m3}"
if [[ ! -x "$M3" ]]; then
  [[ "$M3" == build/release/m3 ]] || { echo "load-test: $M3 is not an executable" >&2; exit 1; }
  scripts/build.sh release
fi
limit=()
suffix=""
if [[ -n "${KB_LIMIT:-}" ]]; then
  limit=(--limit "$KB_LIMIT")
  suffix="-$KB_LIMIT"
fi
BANK="${BANK:-out/load-test/kb-bank$suffix}"
mkdir -p "$(dirname "$BANK")"
t0=$(date +%s)
# bm25 serves the load test: no dense index to build.
"$M3" memorize -m "$MODEL" --kb knowledge/kb.jsonl -o "$BANK" --retriever none "${limit[@]}" >/dev/null
echo "load-test: bank $BANK ready in $(($(date +%s) - t0)) s ($("$M3" bank info "$BANK" | grep -m1 -i 'memories' | tr -s ' ' || true))"
exec /usr/bin/python3 tools/load_test.py --m3 "$M3" --model "$MODEL" --bank "$BANK" "$@"
