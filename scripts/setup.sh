#!/usr/bin/env bash
# One-time set-up for a fresh clone: system packages the tests and the local stack use, then npm deps.
# ONNXRUNTIME_NODE_INSTALL=skip: onnxruntime-node's postinstall would otherwise try to download CUDA
# libraries from NuGet; the CPU build ships inside the npm tarball (see ../shared/docs/onnxruntime-node.md).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null 2>&1; then
  echo "[setup] installing redis-server from Debian" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi
export ONNXRUNTIME_NODE_INSTALL=skip
if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi
