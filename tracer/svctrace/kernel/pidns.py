"""The PID namespace svctrace runs in: the one whose pids the eBPF program reports.

In a container (Docker, Podman, Kubernetes, a GitHub `container:` job) svctrace, pytest
and their /proc live in a child PID namespace while the kernel's own pids are the host's.
The program asks bpf_get_ns_current_pid_tgid() (Linux 5.7+) for the pids of this one.
/proc is read raw here: psutil does not tell namespaces.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

INITIAL_INODE = 0xEFFFFFFC  # PROC_PID_INIT_INO: the initial namespace's fixed inode
NS_HELPER_KERNEL = (5, 7)   # bpf_get_ns_current_pid_tgid


@dataclass(frozen=True)
class PidNamespace:
    inode: int
    dev: int  # st_dev of /proc/self/ns/pid as user space encodes it

    @property
    def initial(self) -> bool:
        return self.inode == INITIAL_INODE

    @property
    def kernel_dev(self) -> int:
        """dev_t as the kernel compares it (MKDEV: major << 20 | minor)."""
        return (os.major(self.dev) << 20) | os.minor(self.dev)

    def label(self) -> str:
        kind = "initial (host)" if self.initial else "nested (a container's)"
        return f"pid:[{self.inode}] {kind}"


@lru_cache(maxsize=1)
def current() -> PidNamespace:
    """This process's PID namespace (read through /proc/self, which names it correctly even
    when /proc belongs to another namespace). OSError when /proc is not mounted."""
    st = os.stat("/proc/self/ns/pid")
    return PidNamespace(st.st_ino, st.st_dev)


def proc_is_ours() -> bool:
    """Whether /proc shows this namespace's pids (not so after `unshare --pid --fork`
    without --mount-proc): only then is /proc/<pid> the process a record names."""
    try:
        return int(os.readlink("/proc/self")) == os.getpid()
    except (OSError, ValueError):
        return False


def _kernel_version() -> tuple[int, int]:
    release = os.uname().release.split("-")[0].split(".")
    try:
        return int(release[0]), int(release[1])
    except (IndexError, ValueError):
        return (0, 0)


def unsupported_reason() -> str | None:
    """None if the eBPF backend can report pids of this namespace, else why not."""
    try:
        ns = current()
    except OSError as exc:
        return f"/proc/self/ns/pid is not readable ({exc.strerror}): mount /proc"
    if not ns.initial and _kernel_version() < NS_HELPER_KERNEL:
        return ("svctrace runs in a child PID namespace (a container) and this kernel is "
                "older than 5.7, which lacks bpf_get_ns_current_pid_tgid: run it in the "
                "host PID namespace (docker --pid=host) or use --backend strace")
    return None
