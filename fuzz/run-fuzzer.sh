#!/usr/bin/env bash
# Runs one libFuzzer target for a fixed time over a temporary copy of its committed corpus (the
# repository is never written), as the fuzz ctests do:
#   fuzz/run-fuzzer.sh BINARY CORPUS_DIR SECONDS [ARTIFACT_DIR] [DICT]
# Exits non-zero on any crash, leak, sanitizer report, timeout (-timeout=20 s per input) or
# out-of-memory (-rss_limit_mb=2048); the input that did it is kept in ARTIFACT_DIR (default
# ./fuzz-artifacts) and printed as hex. Reproduce with: BINARY ARTIFACT_DIR/<crash-file>
# Prints "fuzz: <name>: <execs> execs in <s> s, corpus <n> -> <m>" on success.
set -euo pipefail
bin="$(realpath "$1")" corpus="$(realpath "$2")" seconds="$3" artifacts="${4:-$PWD/fuzz-artifacts}" dict="${5:-}"
name="$(basename "$bin")"
# The scratch space: tmpfs when there is one (fuzz_bank fsyncs every bank it damages).
base="${TMPDIR:-/tmp}"
[[ -z "${TMPDIR:-}" && -d /dev/shm && -w /dev/shm ]] && base=/dev/shm
work="$(mktemp -d "$base/m3-$name.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/corpus" "$artifacts"
cp "$corpus"/* "$work/corpus/"
seeds=$(ls "$work/corpus" | wc -l)

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"
export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$(dirname "$(realpath "$0")")/lsan.supp:print_suppressions=0}"
args=(-max_total_time="$seconds" -rss_limit_mb=2048 -timeout=20 -print_final_stats=1
      -artifact_prefix="$artifacts/$name-")
[[ -n "$dict" ]] && args+=(-dict="$(realpath "$dict")")

rc=0
(cd "$work" && TMPDIR="$work" "$bin" "${args[@]}" "$work/corpus") >"$work/log" 2>&1 || rc=$?
if [[ $rc -ne 0 ]]; then
  tail -n 80 "$work/log"
  for f in $(grep -o "Test unit written to [^ ]*" "$work/log" | awk '{print $5}'); do
    echo "fuzz: $name: failing input $f ($(stat -c %s "$f") bytes):"
    head -c 512 "$f" | od -An -tx1 | head -n 32
  done
  echo "fuzz: $name FAILED (exit $rc)"
  exit 1
fi
execs=$(grep -o "stat::number_of_executed_units: *[0-9]*" "$work/log" | awk '{print $2}')
secs=$(grep -o "Done [0-9]* runs in [0-9]* second" "$work/log" | awk '{print $5}')
echo "fuzz: $name: ${execs:-?} execs in ${secs:-$seconds} s, corpus $seeds -> $(ls "$work/corpus" | wc -l)"
grep -E "^(#[0-9]+ +(INITED|DONE)|INFO: (seed corpus|Loaded))" "$work/log" | tail -n 4 || true
