#!/usr/bin/env bash
# One-time set-up for a fresh clone: system packages the tests and the local stack use, then npm deps.
# ONNXRUNTIME_NODE_INSTALL=skip: onnxruntime-node's postinstall would otherwise try to download CUDA
# libraries from NuGet; the CPU build ships inside the npm tarball (see ../shared/docs/onnxruntime-node.md).
set -euo pipefail
cd "$(dirname "$0")/.."
# redis-server: the tests' and the local stack's Redis; chromium: the console's browser test
# (test/service/console-browser.test.ts drives it with playwright-core).
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  echo "[setup] installing ${missing[*]} from Debian" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
export ONNXRUNTIME_NODE_INSTALL=skip
if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi
