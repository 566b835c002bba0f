#!/usr/bin/env bash
# Installs whatever this machine is missing for `make run` (mode "run") or `make test` (mode "test").
# Idempotent: a warm machine passes through in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"
PYTHON="${PYTHON:-python3}"

apt_pkgs=(postgresql redis-server coturn)
# zbarimg decodes QR PNGs in tests; haproxy is the sticky proxy the multi-node tests run
# (deploy/haproxy/haproxy.cfg) and `haproxy -c` in tests/deploy.
if [ "$mode" = test ]; then apt_pkgs+=(chromium zbar-tools haproxy); fi
command -v node >/dev/null 2>&1 || apt_pkgs+=(nodejs npm)

missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing system packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "bootstrap: Python >= 3.11 required"; exit 1; }
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv"
  "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
extras="[bots]"; [ "$mode" = test ] && extras="[dev]"
stamp=".venv/.installed-$mode-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "bootstrap: installing Python packages (.${extras})"
  .venv/bin/pip install -q -e ".${extras}"
  touch "$stamp"
fi

if [ "$mode" = test ] && [ -f tests/js/package.json ]; then
  if [ ! -d tests/js/node_modules ] || [ tests/js/package-lock.json -nt tests/js/node_modules ]; then
    echo "bootstrap: installing npm packages for tests/js"
    (cd tests/js && npm ci --no-audit --no-fund --loglevel=error)
  fi
fi
if [ -f frontend-stub/package.json ]; then
  if [ ! -d frontend-stub/node_modules ] || [ frontend-stub/package-lock.json -nt frontend-stub/node_modules ]; then
    echo "bootstrap: installing npm packages for frontend-stub"
    (cd frontend-stub && npm ci --no-audit --no-fund --loglevel=error)
  fi
fi
