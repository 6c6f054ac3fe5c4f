#!/usr/bin/env bash
# The test command (README, .ci/run): installs what is missing, then runs three stages in turn,
# stopping at the first that fails:
#   ci    builds with -Werror (Release) and runs every ctest; arguments go to this ctest (-R Bank)
#   asan  builds the asan preset (AddressSanitizer + UBSan, both fatal; LeakSanitizer on) and
#         runs its ctests
#   fuzz  builds the libFuzzer targets (clang; fuzz/) and runs each for 30 s over its corpus
# and ends with each stage's ctest count and time. M3_TEST_STAGES chooses stages (default all three,
# "ci asan fuzz"); M3_TEST_STAGES=ci is the quick check. docs/reliability.md has what each covers.
set -euo pipefail
cd "$(dirname "$0")/.."
stages="${M3_TEST_STAGES:-ci asan fuzz}"
summary=()
passed=0
total=0

# ctest with its output shown and its summary line kept for the end.
run_ctest() {
  local preset="$1" t0 log rc line
  shift
  t0=$(date +%s)
  log=$(mktemp)
  set +e
  ctest --preset "$preset" "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  set -e
  line=$(grep -E "tests passed, [0-9]+ tests failed out of [0-9]+" "$log" | tail -n 1)
  rm -f "$log"
  summary+=("$(printf '%-5s %s (%d s)' "$preset" "${line:-no test summary}" $(($(date +%s) - t0)))")
  if [[ "$line" =~ ([0-9]+)\ tests\ failed\ out\ of\ ([0-9]+) ]]; then
    total=$((total + BASH_REMATCH[2]))
    passed=$((passed + BASH_REMATCH[2] - BASH_REMATCH[1]))
  fi
  if [[ $rc -ne 0 ]]; then
    printf 'test.sh: %s\n' "${summary[@]}"
    echo "test.sh: stage '$preset' FAILED"
    exit "$rc"
  fi
}

timed_build() {
  local t0
  t0=$(date +%s)
  scripts/build.sh "$1"
  echo "test.sh: built preset $1 in $(($(date +%s) - t0)) s"
}

scripts/setup.sh
for stage in $stages; do
  case "$stage" in
    ci)
      timed_build ci
      run_ctest ci "$@"
      ;;
    asan)
      timed_build asan
      run_ctest asan
      ;;
    fuzz)
      timed_build fuzz
      run_ctest fuzz
      ;;
    *) echo "test.sh: unknown stage '$stage' in M3_TEST_STAGES (ci, asan, fuzz)" >&2; exit 2 ;;
  esac
done
printf 'test.sh: %s\n' "${summary[@]}"
echo "test.sh: $passed of $total tests passed (stages: $stages)"
