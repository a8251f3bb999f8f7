# The kernel side of svctrace's eBPF backend on Debian/Ubuntu, shared by scripts/setup.sh and
# the GitHub Action (scripts/action.sh). Sourced, not run; needs root, and the caller's
# `say MESSAGE` and `fail MESSAGE` functions.
#   kd_installed PKG         is the Debian package installed?
#   kd_headers_installed     are kernel headers for bcc installed (this kernel's or the distribution's)?
#   kd_headers_candidate     the headers package to install (after apt-get update), or nothing
#   kd_link_headers          link the distribution's headers as /lib/modules/$(uname -r)/{build,source}
#   kd_mount_tracefs         mount tracefs (and debugfs, best effort)

KD_KVER=$(uname -r)
KD_ARCH=$(dpkg --print-architecture 2>/dev/null || uname -m)
# Headers built for this kernel first; none exist for custom kernels (or a container's host
# kernel), and then the distribution's serve, because bcc's tracepoint programs read the live
# tracepoint format from tracefs (DESIGN.md). Debian names them linux-headers-<arch>,
# Ubuntu linux-headers-generic.
KD_HEADERS=("linux-headers-$KD_KVER" "linux-headers-$KD_ARCH" linux-headers-generic)

kd_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }

kd_headers_installed() {
    local p
    [ -e "/lib/modules/$KD_KVER/build" ] && return 0
    for p in "${KD_HEADERS[@]}"; do kd_installed "$p" && return 0; done
    return 1
}

kd_headers_candidate() {
    local p
    for p in "${KD_HEADERS[@]}"; do
        if apt-cache show "$p" >/dev/null 2>&1; then echo "$p"; return 0; fi
    done
}

kd_link_headers() {
    local mod=/lib/modules/$KD_KVER hdr="" flavour common
    if [ -e "$mod/build" ] && [ -e "$mod/source" ]; then
        say "kernel headers present at $mod/build"
        return 0
    fi
    # Debian: /usr/src/linux-headers-<ver>-<arch> (build) + linux-headers-<ver>-common
    # (source); Ubuntu: linux-headers-<ver>-generic + linux-headers-<ver>. Exactly as the
    # distribution's own /lib/modules links.
    for flavour in "$KD_ARCH" generic; do
        hdr=$(ls -d /usr/src/linux-headers-*-"$flavour" 2>/dev/null | sort -V | tail -n 1 || true)
        [ -n "$hdr" ] && break
    done
    [ -n "$hdr" ] || fail "no /usr/src/linux-headers-*-$KD_ARCH directory to link for kernel $KD_KVER."
    common=${hdr%-"$flavour"}-common
    [ -d "$common" ] || common=${hdr%-"$flavour"}
    mkdir -p "$mod"
    if [ ! -e "$mod/build" ]; then
        ln -sfn "$hdr" "$mod/build"
        say "no headers package for kernel $KD_KVER: linked $mod/build -> $hdr"
    fi
    if [ ! -e "$mod/source" ] && [ -d "$common" ]; then
        ln -sfn "$common" "$mod/source"
        say "linked $mod/source -> $common"
    fi
}

kd_mount_tracefs() {
    # Not mounted in fresh containers or at boot on some machines; mounts do not survive a
    # reboot (svctrace run also mounts tracefs itself when root, and notes it).
    if ! mountpoint -q /sys/kernel/tracing; then
        mount -t tracefs tracefs /sys/kernel/tracing
        say "mounted tracefs at /sys/kernel/tracing"
    fi
    # bcc 0.26 looks for /sys/kernel/debug/tracing first, then /sys/kernel/tracing: debugfs
    # is a convenience, not a requirement, so failing to mount it only warns.
    if ! mountpoint -q /sys/kernel/debug; then
        if mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null; then
            say "mounted debugfs at /sys/kernel/debug"
        else
            say "warning: could not mount debugfs (bcc will use /sys/kernel/tracing)"
        fi
    fi
}
