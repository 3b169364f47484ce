#!/usr/bin/env bash
# Make a fresh Debian 12 machine (or clone) ready for recstream. Idempotent and quiet: every step is
# skipped when already done, so running it before each `make test` / `make demo` costs ~1 s.
#
#   1. apt packages, only when missing: python3-venv (if `python3 -m venv` fails), redis-server,
#      openjdk-17-jre-headless (if no java), maven (if no mvn), prometheus (if no promtool). Needs root
#      or passwordless sudo. With RECSTREAM_BOOTSTRAP_DEMO=1 (`make demo` sets it) also chromium (if no
#      /usr/bin/chromium): the demo's headless check that its HTML report renders.
#   2. .venv + `pip install -e '.[dev,bench]'` (re-run only when pyproject.toml changed; the pip
#      cache stays in the default user cache and is reused across runs).
#   3. the Kafka broker jars from Maven Central into the shared per-version cache
#      (python -m infra.kafka_broker --fetch-jars; once per Kafka version).
#
# Environment: PYTHON (default python3, must be >= 3.11), VENV (default .venv), RECSTREAM_BOOTSTRAP_DEMO
# (1: the demo's packages too).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
STAMP="$VENV/.recstream-install.sha256"

say() { echo "bootstrap: $*"; }
die() { echo "bootstrap: error: $*" >&2; exit 1; }

APT_UPDATED=0
apt_install() {
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "need root or sudo to install: $* (apt-get install $*)"
        sudo=(sudo -n)
    fi
    say "installing apt packages: $* (once)"
    if [ "$APT_UPDATED" -eq 0 ]; then
        "${sudo[@]}" apt-get update -qq >/dev/null || die "apt-get update failed"
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@" \
        >/dev/null || die "apt-get install $* failed"
}

# ---- 1. system packages -------------------------------------------------------------------------
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found; install Python >= 3.11"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$PYTHON is $("$PYTHON" -V 2>&1); recstream needs Python >= 3.11 (set PYTHON=python3.11)"

missing=()
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || missing+=(redis-server)
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)  # alert-rule tests (promtool), monitoring
if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}"
fi
# the demo renders its HTML report headless; without chromium it only skips that check, so not fatal
if [ "${RECSTREAM_BOOTSTRAP_DEMO:-0}" = 1 ] && [ ! -x /usr/bin/chromium ]; then
    (apt_install chromium) || say "chromium could not be installed: the demo will skip its render check"
fi

# ---- 2. virtualenv + package ----------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    rm -rf "$VENV"
    if ! "$PYTHON" -m venv "$VENV" >/dev/null 2>&1; then
        rm -rf "$VENV"
        apt_install python3-venv
        "$PYTHON" -m venv "$VENV" || die "cannot create $VENV with $PYTHON -m venv"
    fi
    say "created $VENV"
fi

want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
    say "installing recstream and its dependencies into $VENV (pip; first time takes a few minutes)"
    log="$(mktemp)"
    if ! "$VENV/bin/python" -m pip install --disable-pip-version-check -q -e '.[dev,bench]' >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        rm -f "$log"
        die "pip install -e '.[dev,bench]' failed (output above)"
    fi
    rm -f "$log"
    echo "$want" >"$STAMP"
fi

# ---- 3. Kafka broker jars ---------------------------------------------------------------------------
"$VENV/bin/python" -m infra.kafka_broker --fetch-jars || die "could not fetch the Kafka jars (see above)"
