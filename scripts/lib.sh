# Shared by scripts/test and scripts/daemon (sourced, not run).
# shellcheck shell=bash

BEIRAN_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS_VENV=$BEIRAN_ROOT/.venv-tools
# shellcheck disable=SC2034  # used by scripts/daemon
DEBIAN_PYTHON=/usr/bin/python3

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Run a command quietly; show its output only when it fails (and return its status).
quiet() {
    local out rc=0
    out=$(mktemp)
    "$@" >"$out" 2>&1 || rc=$?
    if [ "$rc" != 0 ]; then
        cat "$out" >&2
        printf 'error: failed (exit %s): %s\n' "$rc" "$*" >&2
    fi
    rm -f "$out"
    return "$rc"
}

# apt_ensure PKG...: install the Debian packages that are not installed yet (apt-get update first).
# Packages do not start their services while we install them: a test machine needs the programs,
# not a running apt-cacher-ng, nginx or dockerd.
apt_ensure() {
    local missing=() pkg sudo=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "not root and no sudo: install these first: apt-get install ${missing[*]}"
        sudo=(sudo)
    fi
    say "installing Debian packages: ${missing[*]}"
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
        "${sudo[@]}" chmod 755 "$policy"
        own_policy=1
    fi
    local rc=0
    quiet "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q || rc=$?
    if [ "$rc" = 0 ]; then
        quiet "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}" || rc=$?
    fi
    if [ "$own_policy" = 1 ]; then "${sudo[@]}" rm -f "$policy"; fi
    return "$rc"
}

# The tool venv (.venv-tools): nox and uv, made from the `python3` on PATH.
ensure_tools() {
    if [ -x "$TOOLS_VENV/bin/nox" ] && "$TOOLS_VENV/bin/python" -c 'import nox, uv' >/dev/null 2>&1; then
        return 0
    fi
    say "making the tool venv $TOOLS_VENV (nox, uv)"
    rm -rf "$TOOLS_VENV"
    quiet python3 -m venv "$TOOLS_VENV"
    quiet "$TOOLS_VENV/bin/python" -m pip install --quiet --disable-pip-version-check 'nox>=2024.10' uv
}

# stale_dists DIST...: the distributions (beiran, beiran-docker, ...) whose wheel in dist/ is missing
# or older than one of its sources (the rule noxfile.py uses), as nox names them (core, docker, ...).
stale_dists() {
    local d name pat wheel srcs out=()
    for d in "$@"; do
        name=${d#beiran}; name=${name#-}; name=${name:-core}
        if [ "$name" = core ]; then
            pat="beiran-[0-9]*.whl"
            srcs=("$BEIRAN_ROOT/beiran" "$BEIRAN_ROOT/pyproject.toml" "$BEIRAN_ROOT/README.md")
        else
            pat="beiran_$name-[0-9]*.whl"
            srcs=("$BEIRAN_ROOT/beiran_plugins/$name")
        fi
        wheel=$(compgen -G "$BEIRAN_ROOT/dist/$pat" | head -n1 || true)
        if [ -z "$wheel" ] || [ -n "$(find "${srcs[@]}" -type f \( -name '*.py' -o -name '*.proto' -o -name '*.json' \
            -o -name '*.toml' -o -name '*.md' \) -not -path '*/__pycache__/*' -newer "$wheel" -print -quit)" ]; then
            out+=("$name")
        fi
    done
    echo "${out[*]}"
}
