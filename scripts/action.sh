#!/usr/bin/env bash
# The GitHub Action (action.yml) as one script, so it runs the same in a job and in the tests.
# Inputs arrive as INPUT_* variables; GITHUB_ACTION_PATH is the Action's own checkout (svctrace
# is installed from there into a venv under RUNNER_TEMP, never from PyPI by name).
# Modes: run (COMMAND under `svctrace run`), merge (shard reports into one), tiers (plan and
# matrix JSON). The exit status is the command's own in run mode; 2 when the Action itself
# could not start it (one ::error line says why).
set -Eeuo pipefail

say() { printf 'svctrace action: %s\n' "$*"; }
fail() { printf '::error title=svctrace action::%s\n' "$*"; exit 2; }
trap 'fail "internal step failed (exit $?) at line $LINENO of scripts/action.sh"' ERR

ACTION=${GITHUB_ACTION_PATH:?GITHUB_ACTION_PATH is not set: run this as a GitHub Action step}
MODE=${INPUT_MODE:-run}
PY=${INPUT_PYTHON:-python3}
VENV=${RUNNER_TEMP:-/tmp}/svctrace-action-venv
SUMMARY=${GITHUB_STEP_SUMMARY:-/dev/null}
[ "${INPUT_SUMMARY:-true}" = true ] || SUMMARY=/dev/null
truthy() { case "${1:-}" in true|True|TRUE|yes|1) return 0 ;; *) return 1 ;; esac; }
output() { if [ -n "${GITHUB_OUTPUT:-}" ]; then printf '%s=%s\n' "$1" "$2" >> "$GITHUB_OUTPUT"; fi; }
# Shell-like words of an input (quotes respected, no expansion of anything).
words() { "$PY" -c 'import shlex, sys; sys.stdout.write("".join(w + "\0" for w in shlex.split(sys.argv[1])))' "$1"; }
for input in ARGS REPORTS; do
    value=$(printenv "INPUT_$input" || true)
    words "$value" >/dev/null 2>&1 || fail "input ${input,,} is not valid shell words (an unclosed quote?): $value"
done

case "$MODE" in run|merge|tiers) ;; *) fail "mode '$MODE' is not one of run, merge, tiers." ;; esac
if [ "$MODE" = run ] && [ -z "${INPUT_COMMAND:-}" ]; then
    fail "mode run needs the 'command' input (the test command to trace, e.g. pytest tests/)."
fi
# The command reaches svctrace as one bash -c string, so svctrace cannot read a tier from
# its pytest options: the guard's tier comes from the inputs.
if [ "$MODE" = run ] && truthy "${INPUT_GUARD:-}" && { [ -z "${INPUT_PLAN:-}" ] || [ -z "${INPUT_TIER:-}" ]; }; then
    fail "guard: true needs the 'plan' and 'tier' inputs (the tier to run and guard)."
fi
[ -z "${INPUT_WORKING_DIRECTORY:-}" ] || cd "$INPUT_WORKING_DIRECTORY" \
    || fail "working-directory '$INPUT_WORKING_DIRECTORY' does not exist."

# Root for apt, the BPF programs and the guard: the job's user on hosted runners has
# passwordless sudo; a container job is root already.
if [ "$(id -u)" -eq 0 ]; then
    AS_ROOT=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    # -E keeps the job's environment for the command, which svctrace runs as this user.
    AS_ROOT=(sudo -n -E env "PATH=$PATH")
else
    AS_ROOT=(none)
fi
root() {
    [ "${AS_ROOT[0]:-}" != none ] || fail "$1 needs root: run the job as root or give its user passwordless sudo."
    shift
    "${AS_ROOT[@]}" "$@"
}

echo "::group::svctrace action: install"
if truthy "${INPUT_INSTALL_SYSTEM_PACKAGES:-true}"; then
    what=$MODE; [ "$MODE" = run ] || what=python
    if [ "$what" = run ] || ! "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then
        root "installing system packages" "$ACTION/scripts/action-system.sh" "$what" "$PY"
    fi
fi
# One venv per job, reused by later steps of the same job that use the same Action checkout.
stamp=$ACTION
if truthy "${INPUT_STACKS:-}"; then stamp+=" stacks"; fi
if [ -x "$VENV/bin/svctrace" ] && [ "$(cat "$VENV/.action" 2>/dev/null)" = "$stamp" ]; then
    say "reusing $VENV"
else
    command -v "$PY" >/dev/null || fail "no Python interpreter '$PY' (input python)."
    "$PY" -m venv --clear "$VENV" || fail "could not create a venv with $PY at $VENV."
    target=$ACTION
    # py-spy takes the stacks of `stacks: true`; it is svctrace's optional dependency.
    truthy "${INPUT_STACKS:-}" && target="$ACTION[stacks]"
    PIP_ROOT_USER_ACTION=ignore "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
        "$target" || fail "could not install svctrace from $ACTION into $VENV (pip's output above)."
    printf '%s\n' "$stamp" > "$VENV/.action"
fi
say "$("$VENV/bin/svctrace" --version)"
echo "::endgroup::"
SVCTRACE=$VENV/bin/svctrace
mapfile -d '' extra < <(words "${INPUT_ARGS:-}")

summarize() {   # REPORT [PLAN]: the Markdown summary of a report into the job's summary
    local plan=()
    [ -z "${2:-}" ] || [ ! -f "$2" ] || plan=(--plan "$2")
    "$SVCTRACE" summary --markdown "${plan[@]}" "$1" >> "$SUMMARY" \
        || say "could not summarize $1 (see above)"
}

if [ "$MODE" = run ]; then
    report=${INPUT_REPORT:-svctrace-report.json}
    opts=(--report "$report")
    [ -z "${INPUT_BACKEND:-}" ] || opts+=(--backend "$INPUT_BACKEND")
    [ -z "${INPUT_DENY:-}" ] || opts+=(--deny "$INPUT_DENY")
    [ -z "${INPUT_ALLOW:-}" ] || opts+=(--allow "$INPUT_ALLOW")
    truthy "${INPUT_GUARD:-}" && opts+=(--guard)
    [ -z "${INPUT_PLAN:-}" ] || opts+=(--plan "$INPUT_PLAN")
    [ -z "${INPUT_TIER:-}" ] || opts+=(--tier "$INPUT_TIER")
    [ -z "${INPUT_SHARD:-}" ] || opts+=(--shard "$INPUT_SHARD")
    truthy "${INPUT_STACKS:-}" && opts+=(--stacks)
    # A report left from before (a cached workspace) must not be summarized as this run's.
    started=$(mktemp "${RUNNER_TEMP:-/tmp}/svctrace-action-start.XXXXXX")
    rc=0
    # The command runs as the job's user (svctrace drops root to SUDO_UID), in bash with the
    # options GitHub's own `run:` steps use.
    root "tracing (svctrace run)" "$SVCTRACE" run "${opts[@]}" "${extra[@]}" -- \
        bash --noprofile --norc -eo pipefail -c "$INPUT_COMMAND" || rc=$?
    trap - ERR
    if [ -f "$report" ] && [ "$report" -nt "$started" ]; then
        summarize "$report" "${INPUT_PLAN:-}"
        [ "$rc" -eq 0 ] || printf '\nThe command exited with status **%s**; the report above is complete up to there.\n' "$rc" >> "$SUMMARY"
        output report "$report"
    else
        printf '## svctrace\n\nNo report was written (svctrace exit %s): the step log says why.\n' \
            "$rc" >> "$SUMMARY"
    fi
    rm -f "$started"
    output exit-code "$rc"
    exit "$rc"
elif [ "$MODE" = merge ]; then
    report=${INPUT_REPORT:-svctrace-report.json}
    # Paths or globs, one per line or separated by spaces; a glob that matches nothing is
    # passed on as written, so merge names the missing shard instead of merging fewer.
    mapfile -d '' patterns < <(words "${INPUT_REPORTS:-}")
    [ "${#patterns[@]}" -gt 0 ] || fail "mode merge needs the 'reports' input (the shard reports, e.g. reports/*.json)."
    inputs=()
    for pattern in "${patterns[@]}"; do
        found=()
        if [[ "$pattern" == *[*?[]* ]]; then mapfile -t found < <(compgen -G "$pattern" | sort); fi
        if [ "${#found[@]}" -gt 0 ]; then inputs+=("${found[@]}"); else inputs+=("$pattern"); fi
    done
    trap - ERR
    rc=0
    "$SVCTRACE" merge -o "$report" "${extra[@]}" "${inputs[@]}" || rc=$?
    [ "$rc" -ne 0 ] || { summarize "$report"; output report "$report"; }
    exit "$rc"
else
    plan=${INPUT_PLAN:-plan.json}
    matrix=${INPUT_MATRIX:-${RUNNER_TEMP:-.}/svctrace-matrix.json}
    opts=(--plan-out "$plan" --matrix-out "$matrix" --summary-out "$SUMMARY")
    [ -z "${INPUT_SHARDS:-}" ] || opts+=(--shards "$INPUT_SHARDS")
    truthy "${INPUT_ONE_TIER:-}" && opts+=(--one-tier)
    report=()
    if [ -n "${INPUT_REPORT:-}" ] && [ -f "$INPUT_REPORT" ]; then
        report=("$INPUT_REPORT")
    elif [ -n "${INPUT_REPORT:-}" ]; then
        # No classification yet: the suite still runs, everything in the most complete tier.
        say "no report at $INPUT_REPORT: every test goes to the most complete tier"
        printf 'No report at `%s` yet: every test runs in the most complete tier.\n\n' \
            "$INPUT_REPORT" >> "$SUMMARY"
    fi
    trap - ERR
    rc=0
    "$SVCTRACE" tiers "${report[@]}" "${opts[@]}" "${extra[@]}" || rc=$?
    if [ "$rc" -eq 0 ]; then
        output plan "$plan"
        output matrix "$(tr -d '\n' < "$matrix")"
    fi
    exit "$rc"
fi
