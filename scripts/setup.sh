#!/usr/bin/env bash
# Installs every Debian package m3's build, tests and reference tools need, and the OpenAI Node
# client the server's client test uses (tests/openai, `npm ci`). Idempotent: when all are present
# it only says so (pass --force to run apt-get anyway).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  libopenblas-dev                 # sgemm for prefill / training
  libsentencepiece-dev sentencepiece
  nlohmann-json3-dev libcli11-dev libxxhash-dev
  libfaiss-dev libhnswlib-dev libsqlite3-dev     # memory codecs, dense retrieval, bank catalog
  libtomlplusplus-dev             # m3 train --config
  libcpp-httplib-dev              # m3 serve (a compiled library in Debian: linked, not header-only)
  libgtest-dev libgmock-dev libbenchmark-dev librapidcheck-dev
  python3-numpy python3-torch python3-sentencepiece   # the PyTorch oracle (run with /usr/bin/python3)
  redis-server libhiredis-dev     # the Redis Cluster memory payload backend and its test cluster
  clang libclang-rt-14-dev        # the asan and fuzz presets: clang, ASan/UBSan, libFuzzer (fuzz/)
  libomp-dev                      # OpenMP for clang (find_package(OpenMP); Debian's clang does not pull it in)
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js and npm run the OpenAI client test (tests/openai, openai@6): Debian 12's nodejs 18.20 and
# npm 9.2 do. A node already on the PATH (e.g. NodeSource's, which bundles npm) is kept as it is.
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)

if [[ ${#missing[@]} -eq 0 && "${1:-}" != "--force" ]]; then
  echo "setup: all ${#PACKAGES[@]} packages present"
else
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  echo "setup: installing ${missing[*]:-all}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" \
    $(command -v node >/dev/null || echo nodejs) $(command -v npm >/dev/null || echo npm)
fi

# The OpenAI Node client, pinned by tests/openai/package-lock.json (openai@6: openai@7 needs Node 22).
if [[ ! -f "$ROOT/tests/openai/node_modules/openai/package.json" ]]; then
  node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)' ||
    { echo "setup: node $(node --version) is too old for openai@6 (needs >= 18)" >&2; exit 1; }
  echo "setup: npm ci in tests/openai (the OpenAI client for the server test)"
  (cd "$ROOT/tests/openai" && npm ci --no-audit --no-fund --loglevel=error)
else
  echo "setup: tests/openai/node_modules present"
fi
echo "setup: done"
