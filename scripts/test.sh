#!/usr/bin/env bash
# The test command (README, .ci/run): installs what is missing, builds with -Werror, runs ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh ci
ctest --preset ci "$@"
