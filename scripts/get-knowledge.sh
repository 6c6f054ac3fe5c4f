#!/usr/bin/env bash
# get-knowledge.sh — fetches the fact tables for m3's knowledge data (issue 6) and builds
# knowledge/: facts, the knowledge base (kb.jsonl), stage-2 training text, held-out text,
# questions and multiple-choice sets, with a seeded split into trained / memory_only / distractor.
#
# Sources (docs: /work/shared/docs/data.md, knowledge/README.md): Debian's dict-elements,
# calendar (ships /usr/share/calendar/calendar.*), kgeography-data, miscfiles and iso-codes
# (installed with apt-get when missing), and the npm tarballs world-countries-capitals@3.4.0 and
# periodic-table@0.0.8 (`npm pack`: a download, no install scripts run) kept in SRC_DIR.
# When the stage-1 corpus (data/corpus/*.jsonl, scripts/get-data.sh) is present, no fact whose
# subject and answer co-occur in a corpus document is held out of training (see build.py).
#
# Same inputs give the same bytes; a re-run with nothing changed only checks (build.py compares
# an input fingerprint with knowledge/split.json).
#
# Usage: scripts/get-knowledge.sh [--force]     (SRC_DIR: data/knowledge-src, gitignored)
# Needs: apt-get (as root or through sudo) for missing packages; npm (installed with apt when
# missing); /usr/bin/python3 (standard library only: tools/knowledge/build.py).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
build="$root/tools/knowledge/build.py"
python=/usr/bin/python3
src="$root/data/knowledge-src"

force=()
if [[ "${1:-}" == "--force" ]]; then force=(--force); shift; fi
start_ns=$(date +%s%N)

source "$here/apt-install.sh"

if [[ ! -x $python ]]; then apt_install python3; fi
apt_install dict-elements calendar kgeography-data miscfiles iso-codes
command -v npm >/dev/null || apt_install npm

# npm tarballs: downloaded once; a tarball that does not list cleanly is fetched again.
mkdir -p "$src"
for spec in world-countries-capitals@3.4.0 periodic-table@0.0.8; do
  tarball="${spec%@*}-${spec##*@}.tgz"
  if [[ -f "$src/$tarball" ]] && tar tzf "$src/$tarball" >/dev/null 2>&1; then continue; fi
  echo "get-knowledge: npm pack $spec"
  tmp="$(mktemp -d "$src/.pack.XXXXXX")"
  (cd "$tmp" && npm pack --silent "$spec" >/dev/null)
  [[ -f "$tmp/$tarball" ]] || { echo "get-knowledge: npm pack $spec did not write $tarball" >&2; rm -rf "$tmp"; exit 1; }
  mv "$tmp/$tarball" "$src/$tarball"
  rm -rf "$tmp"
done

$python "$build" --src "$src" --corpus "$root/data/corpus" --out "$root/knowledge" "${force[@]}"
ms=$((($(date +%s%N) - start_ns) / 1000000))
printf 'get-knowledge: knowledge/ ready (split.json lists counts, sources and the corpus check) in %d.%d s\n' $((ms / 1000)) $((ms % 1000 / 100))
