#!/usr/bin/env bash
# The one setup command for svctrace on Debian 12 (run as root or via sudo; safe to re-run):
# system packages, kernel headers for bcc, tracefs/debugfs mounts, and the project venv at
# ./.venv (svctrace loads the system's bcc itself). PYTHON=/path/to/python3 picks the venv's interpreter.
set -Eeuo pipefail

cd "$(dirname "$0")/.."
STEP="starting"
say() { printf 'setup: %s\n' "$*"; }
fail() { printf 'setup: FAILED: %s\n' "$*" >&2; exit 1; }
# Any unguarded command that fails ends the script with one sentence naming the step.
trap 'fail "step \"$STEP\" failed (exit $?); the output above says why."' ERR

[ "$(id -u)" -eq 0 ] || fail "setup.sh needs root (apt, kernel headers, mounts): run sudo scripts/setup.sh"

# apt and dpkg are chatty: keep their output in a log and show its tail only on failure.
quiet() {
    local log
    log=$(mktemp)
    if ! "$@" >"$log" 2>&1; then
        tail -n 25 "$log" >&2
        rm -f "$log"
        fail "step \"$STEP\" failed; the lines above say why."
    fi
    rm -f "$log"
}

# shellcheck source=scripts/kernel-deps.sh
. scripts/kernel-deps.sh   # headers and tracefs, shared with the GitHub Action
installed() { kd_installed "$1"; }

PY=${PYTHON:-python3}
BCC_SRC=/usr/lib/python3/dist-packages/bcc   # Debian's python3-bpfcc (PyPI's `bcc` is unrelated)

# ---------------------------------------------------------------- packages
STEP="checking packages"
# bpfcc: eBPF backend; strace: strace backend; postgresql, redis-server, libpq5: the real
# services the test suite talks to.
want=(python3-bpfcc bpfcc-tools strace postgresql redis-server libpq5 ca-certificates gcc
      valgrind)
# gcc: the benchmarks compile a small C sender for the eBPF capacity probe; valgrind:
# benchmarks.plugin_instructions counts the plugin's instructions
if [ -z "${PYTHON:-}" ] && ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    want+=(python3 python3-venv)   # Debian splits venv/ensurepip out of python3
fi
missing=()
for p in "${want[@]}"; do installed "$p" || missing+=("$p"); done
# Prefer headers built for this kernel; none exist for custom kernels (e.g. 6.18 here), and
# then the distribution's headers serve (Debian's 6.1 ones, linked as /lib/modules/$KVER/build
# below), because bcc's TRACEPOINT_PROBE programs read the live tracepoint format from
# tracefs; the kernel struct offsets svctrace reads come from BTF, not from these headers.
need_headers=yes
if kd_headers_installed; then need_headers=no; fi

if [ "${#missing[@]}" -gt 0 ] || [ "$need_headers" = yes ]; then
    STEP="apt-get update"
    say "updating apt package lists"
    quiet apt-get update
    if [ "$need_headers" = yes ]; then
        hdr_pkg=$(kd_headers_candidate)
        [ -n "$hdr_pkg" ] || fail "no kernel headers package for $(uname -r) in apt's lists."
        missing+=("$hdr_pkg")
    fi
    STEP="apt-get install ${missing[*]}"
    say "installing ${missing[*]}"
    quiet env DEBIAN_FRONTEND=noninteractive apt-get install -y \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"
    # On hosts with an init system, installing these starts Debian's own servers on 5432
    # and 6379, which would collide with scripts/services.py. Stop only what we just caused.
    STEP="stopping auto-started servers"
    if [[ " ${missing[*]} " == *" postgresql "* ]] && command -v pg_lsclusters >/dev/null; then
        while read -r ver name port status _; do
            if [ "$status" = online ]; then
                pg_ctlcluster "$ver" "$name" stop
                say "stopped Debian's auto-started cluster $ver/$name on port $port (svctrace runs its own)"
            fi
        done < <(pg_lsclusters -h)
    fi
    if [[ " ${missing[*]} " == *" redis-server "* ]] && service redis-server status >/dev/null 2>&1; then
        service redis-server stop >/dev/null
        say "stopped Debian's auto-started redis-server (svctrace runs its own)"
    fi
else
    say "system packages already installed"
fi

# ---------------------------------------------------------------- optional: chromium
# Headless Chromium runs the HTML report's browser tests (tests/test_html.py). Optional:
# where the package is unavailable, setup goes on and those tests are skipped, saying why.
STEP="installing chromium (optional)"
if ! installed chromium; then
    if apt-cache show chromium >/dev/null 2>&1 || { apt-get update >/dev/null 2>&1 && apt-cache show chromium >/dev/null 2>&1; }; then
        if env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium >/dev/null 2>&1; then
            say "installed chromium (for the HTML report's browser tests)"
        else
            say "could not install chromium: the HTML report's browser tests will be skipped"
        fi
    else
        say "no chromium package here: the HTML report's browser tests will be skipped"
    fi
fi

# ---------------------------------------------------------------- kernel headers, tracefs
STEP="linking kernel headers"
kd_link_headers
# Not mounted at boot on these machines, and mounts do not survive a reboot: re-run setup.
STEP="mounting tracefs"
kd_mount_tracefs

# libpq's default socket dir; Debian creates it via systemd-tmpfiles, absent without systemd.
STEP="creating /var/run/postgresql"
if [ ! -d /var/run/postgresql ] && id postgres >/dev/null 2>&1; then
    install -d -m 2775 -o postgres -g postgres /var/run/postgresql
    say "created /var/run/postgresql"
fi

# ---------------------------------------------------------------- venv
STEP="creating .venv"
command -v "$PY" >/dev/null || fail "Python interpreter '$PY' not found: set PYTHON=/path/to/python3."
if [ -x .venv/bin/python ] && .venv/bin/python -c 'import sys' 2>/dev/null; then
    say "reusing .venv ($(.venv/bin/python -V 2>&1))"
elif [ -e .venv ]; then
    say ".venv exists but its python does not run: recreating it with $PY"
    "$PY" -m venv --clear .venv
else
    say "creating .venv with $PY ($("$PY" -V 2>&1))"
    "$PY" -m venv .venv
fi

STEP="pip install -e .[test]"
say "installing svctrace and its test dependencies into .venv"
PIP_ROOT_USER_ACTION=ignore .venv/bin/python -m pip install -q --disable-pip-version-check \
    -e '.[test]'
# setuptools leaves svctrace.egg-info in the checkout (the editable install does not use it).
# Left there, owned by whoever ran this (root), it breaks every other user's `pip install .`
# from a shared checkout: setuptools cannot rewrite it. Each build makes it anew.
rm -rf ./svctrace.egg-info

# svctrace finds the distribution's bcc by itself (svctrace.kernel.bcc_import): no link.
# Earlier versions of this script linked it into the venv; that link is no longer needed.
STEP="removing an old bcc link"
SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ -L "$SITE/bcc" ] && [ "$(readlink "$SITE/bcc")" = "$BCC_SRC" ]; then
    rm -f "$SITE/bcc"
    say "removed the old link $SITE/bcc (svctrace loads the system bcc itself)"
fi
[ -d "$BCC_SRC" ] || fail "$BCC_SRC is missing although python3-bpfcc is installed."
STEP="checking that svctrace finds bcc"
.venv/bin/python -c 'from svctrace.kernel.bcc_import import load_bcc; load_bcc()' \
    || fail "svctrace cannot load the system bcc (see the error above)."

# A real compile-and-attach proves headers, tracefs and privileges together. eBPF may be
# unavailable in some containers; svctrace then falls back to strace, so this only warns.
STEP="eBPF self-check"
if out=$(timeout 120 .venv/bin/python -c 'from svctrace.kernel.bcc_import import load_bcc
load_bcc().BPF(text="TRACEPOINT_PROBE(syscalls, sys_enter_connect) { return 0; }")' 2>&1); then
    say "eBPF self-check passed (bcc compiled and attached a tracepoint program)"
else
    say "warning: eBPF self-check failed, the ebpf backend will be unavailable: $(printf '%s\n' "$out" | tail -n 1)"
fi

# ---------------------------------------------------------------- ownership
STEP="handing .venv to the invoking user"
if [ -n "${SUDO_UID:-}" ] && [ "$SUDO_UID" != 0 ]; then
    chown -R -h "$SUDO_UID:${SUDO_GID:-$SUDO_UID}" .venv
    say "gave .venv to uid $SUDO_UID"
fi

say "done; run the tests with: .venv/bin/python -m pytest tests/ -p no:cacheprovider -q -rs"
