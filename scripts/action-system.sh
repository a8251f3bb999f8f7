#!/usr/bin/env bash
# The GitHub Action's system step, as root: what the runner lacks for svctrace. `run` mode:
# bcc (python3-bpfcc), strace, kernel headers (or the distribution's, linked), tracefs;
# every mode: a Python with venv. Quiet when everything is there; apt's output only on failure.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
say() { printf 'svctrace action: %s\n' "$*"; }
fail() { printf '::error title=svctrace action::%s\n' "$*"; exit 2; }
# shellcheck source=scripts/kernel-deps.sh
. scripts/kernel-deps.sh

WHAT=${1:-run}
PY=${2:-python3}
quiet() {
    local log
    log=$(mktemp)
    if ! "$@" >"$log" 2>&1; then
        tail -n 25 "$log"
        rm -f "$log"
        fail "'$*' failed; the lines above say why."
    fi
    rm -f "$log"
}

want=()
if ! "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    want+=(python3 python3-venv)   # Debian and Ubuntu split venv/ensurepip out of python3
fi
need_headers=no
if [ "$WHAT" = run ]; then
    for p in python3-bpfcc strace; do kd_installed "$p" || want+=("$p"); done
    kd_headers_installed || need_headers=yes
fi
if [ "${#want[@]}" -gt 0 ] || [ "$need_headers" = yes ]; then
    command -v apt-get >/dev/null || fail "missing ${want[*]} (and no apt-get to install them): use a Debian or Ubuntu runner or image."
    say "apt-get update"
    quiet apt-get update
    if [ "$need_headers" = yes ]; then
        hdr=$(kd_headers_candidate)
        [ -n "$hdr" ] || fail "no kernel headers package for $(uname -r) in apt's lists."
        want+=("$hdr")
    fi
    say "installing ${want[*]}"
    quiet env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${want[@]}"
fi
if [ "$WHAT" = run ]; then
    kd_link_headers
    # A container job without --privileged cannot mount tracefs: svctrace then falls back
    # to strace and says why; that is its decision to report, not a setup failure here.
    kd_mount_tracefs || say "warning: could not mount tracefs (is the container --privileged?)"
fi
