#!/usr/bin/env bash
# Installs every Debian package m3's build, tests and reference tools need. Idempotent: when all
# are present it only says so (pass --force to run apt-get anyway).
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  libopenblas-dev                 # sgemm for prefill / training
  libsentencepiece-dev sentencepiece
  nlohmann-json3-dev libcli11-dev libxxhash-dev
  libfaiss-dev libhnswlib-dev libsqlite3-dev     # memory codecs, dense retrieval, bank catalog
  libtomlplusplus-dev             # m3 train --config
  libgtest-dev libgmock-dev libbenchmark-dev librapidcheck-dev
  python3-numpy python3-torch python3-sentencepiece   # the PyTorch oracle (run with /usr/bin/python3)
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -eq 0 && "${1:-}" != "--force" ]]; then
  echo "setup: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
echo "setup: installing ${missing[*]:-all}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"
echo "setup: done"
