"""StraceParser on strace 6.1 output captured on this machine (`strace -f -q -yy
--absolute-timestamps=unix,precision:ns --seccomp-bpf -s 128`), frozen here verbatim."""
from __future__ import annotations

import re

import pytest

from svctrace.events import Destination, Event, ProcessEvent
from svctrace.capture.strace_parse import StraceParser, _unquote, parse_strings


def parse(log: str, **kwargs) -> list:
    parser = StraceParser(**kwargs)
    out: list = []
    for line in log.strip("\n").splitlines():
        out += parser.feed(line + "\n")
    return out + parser.finish()


def events(records: list, kind: str | None = None) -> list[Event]:
    return [r for r in records if isinstance(r, Event) and kind in (None, r.kind)]


def procs(records: list) -> list[ProcessEvent]:
    return [r for r in records if isinstance(r, ProcessEvent)]


def tcp(addr: str, port: int) -> Destination:
    return Destination("inet6" if ":" in addr else "inet", "tcp", addr, port)


def udp(addr: str, port: int) -> Destination:
    return Destination("inet6" if ":" in addr else "inet", "udp", addr, port)


def unix(path: str) -> Destination:
    return Destination("unix", "unix", path)


def strip_yy(log: str) -> str:
    """The same log as strace without -yy would print it: bare fd numbers."""
    return re.sub(r"(\d+)<(?:[^<>]|<[^<>]*>)*>", r"\1", log)


# Python: TCP listener + connect + send + reply, refused connect, IPv6, UDP, unix path and
# abstract, F_DUPFD_CLOEXEC, non-blocking connect, fork, thread, subprocess (vfork), writev,
# sendmsg. Comments mark what each group exercises.
BASIC = r"""
4983  1795275713.274676711 execve("/work/main/.venv/bin/python", ["/work/main/.venv/bin/python", "prog.py"], 0x7ffc56cabd28 /* 35 vars */) = 0
4983  1795275713.275653221 close(3</etc/ld.so.cache>) = 0
4983  1795275713.329152159 bind(3<TCP:[11585]>, {sa_family=AF_INET, sin_port=htons(0), sin_addr=inet_addr("127.0.0.1")}, 16) = 0
4983  1795275713.330046059 listen(3<TCP:[127.0.0.1:57095]>, 128) = 0
4983  1795275713.338361594 connect(4<TCP:[11586]>, {sa_family=AF_INET, sin_port=htons(57095), sin_addr=inet_addr("127.0.0.1")}, 16) = 0
4983  1795275713.339439174 sendto(4<TCP:[127.0.0.1:54404->127.0.0.1:57095]>, "hello", 5, 0, NULL, 0) = 5
4983  1795275713.341616676 sendto(5<TCP:[127.0.0.1:57095->127.0.0.1:54404]>, "reply", 5, 0, NULL, 0) = 5
4983  1795275713.341779590 connect(6<TCP:[11588]>, {sa_family=AF_INET, sin_port=htons(1), sin_addr=inet_addr("127.0.0.1")}, 16) = -1 ECONNREFUSED (Connection refused)
4983  1795275713.342798985 bind(7<TCPv6:[11589]>, {sa_family=AF_INET6, sin6_port=htons(0), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "::1", &sin6_addr), sin6_scope_id=0}, 28) = 0
4983  1795275713.343690368 listen(7<TCPv6:[[::1]:33277]>, 128) = 0
4983  1795275713.344834840 connect(8<TCPv6:[11590]>, {sa_family=AF_INET6, sin6_port=htons(33277), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "::1", &sin6_addr), sin6_scope_id=0}, 28) = 0
4983  1795275713.345834297 sendto(8<TCPv6:[[::1]:49666->[::1]:33277]>, "v6", 2, 0, NULL, 0) = 2
4983  1795275713.346838782 sendto(9<UDP:[11591]>, "statsd", 6, 0, {sa_family=AF_INET, sin_port=htons(8125), sin_addr=inet_addr("127.0.0.1")}, 16) = 6
4983  1795275713.347171899 connect(11<UDP:[11592]>, {sa_family=AF_INET, sin_port=htons(8126), sin_addr=inet_addr("127.0.0.1")}, 16) = 0
4983  1795275713.347441579 sendto(11<UDP:[127.0.0.1:35045->127.0.0.1:8126]>, "x", 1, 0, NULL, 0) = 1
4983  1795275713.347725755 bind(12<UNIX-STREAM:[11593]>, {sa_family=AF_UNIX, sun_path="/tmp/st/sock"}, 15) = 0
4983  1795275713.347975245 listen(12<UNIX-STREAM:[11593,"/tmp/st/sock"]>, 128) = 0
4983  1795275713.348162976 connect(13<UNIX-STREAM:[11594]>, {sa_family=AF_UNIX, sun_path="/tmp/st/sock"}, 15) = 0
4983  1795275713.348342737 sendto(13<UNIX-STREAM:[11594]>, "unix", 4, 0, NULL, 0) = 4
4983  1795275713.348530625 bind(14<UNIX-STREAM:[11595]>, {sa_family=AF_UNIX, sun_path=@"abstr"}, 8) = 0
4983  1795275713.348853846 listen(14<UNIX-STREAM:[11595,@"abstr"]>, 128) = 0
4983  1795275713.349037556 connect(15<UNIX-STREAM:[11596]>, {sa_family=AF_UNIX, sun_path=@"abstr"}, 8) = 0
4983  1795275713.349206530 sendto(15<UNIX-STREAM:[11596]>, "abs", 3, 0, NULL, 0) = 3
4983  1795275713.349395996 fcntl(13<UNIX-STREAM:[11594]>, F_DUPFD_CLOEXEC, 0) = 16<UNIX-STREAM:[11594]>
4983  1795275713.349628713 write(16<UNIX-STREAM:[11594]>, "dup", 3) = 3
4983  1795275713.349798678 close(16<UNIX-STREAM:[11594]>) = 0
4983  1795275713.349977356 connect(16<TCP:[11597]>, {sa_family=AF_INET, sin_port=htons(57095), sin_addr=inet_addr("127.0.0.1")}, 16) = -1 EINPROGRESS (Operation now in progress)
4983  1795275713.351070504 clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD, child_tidptr=0x7fc0027f7e50) = 4984
4984  1795275713.353627407 sendto(13<UNIX-STREAM:[11594]>, "child", 5, 0, NULL, 0) = 5
4984  1795275713.353962313 exit_group(3) = ?
4984  1795275713.354668521 +++ exited with 3 +++
4983  1795275713.354710550 --- SIGCHLD {si_signo=SIGCHLD, si_code=CLD_EXITED, si_pid=4984, si_uid=0, si_status=3, si_utime=0, si_stime=0} ---
4983  1795275713.355049064 clone3({flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM|CLONE_SETTLS|CLONE_PARENT_SETTID|CLONE_CHILD_CLEARTID, child_tid=0x7fc0019fb990, parent_tid=0x7fc0019fb990, exit_signal=0, stack=0x7fc0011fb000, stack_size=0x7fff80, tls=0x7fc0019fb6c0} => {parent_tid=[4985]}, 88) = 4985
4985  1795275713.356981584 sendto(15<UNIX-STREAM:[11596]>, "thread", 6, 0, NULL, 0) = 6
4985  1795275713.357392215 +++ exited with 0 +++
4983  1795275713.357941420 vfork( <unfinished ...>
4986  1795275713.358163090 close(17<pipe:[11606]>) = 0
4986  1795275713.359486252 execve("/usr/bin/true", ["true"], 0x7ffd1fb27800 /* 35 vars */) = 0
4986  1795275713.360566520 exit_group(0 <unfinished ...>
4983  1795275713.360738048 <... vfork resumed>) = 4986
4986  1795275713.360821534 <... exit_group resumed>) = ?
4983  1795275713.360978134 close(18<pipe:[11606]> <unfinished ...>
4986  1795275713.361069573 +++ exited with 0 +++
4983  1795275713.361082029 <... close resumed>) = 0
4983  1795275713.361565807 writev(4<TCP:[127.0.0.1:54404->127.0.0.1:57095]>, [{iov_base="a", iov_len=1}, {iov_base="b", iov_len=1}], 2) = 2
4983  1795275713.361759893 sendmsg(13<UNIX-STREAM:[11594]>, {msg_name=NULL, msg_namelen=0, msg_iov=[{iov_base="msg", iov_len=3}], msg_iovlen=1, msg_controllen=0, msg_flags=0}, 0) = 3
4983  1795275713.368058111 close(13<UNIX-STREAM:[11594]>) = 0
4983  1795275713.378451353 exit_group(0) = ?
4983  1795275713.379630198 +++ exited with 0 +++
"""

# Threads named with prctl(PR_SET_NAME) (as librdkafka does), interleaved unfinished
# calls, unix server reply and socketpair (not contacts), fcntl/dup2, UDPv6, sendmsg with
# msg_name, sendfile, netlink, subprocess killed by SIGKILL, execve from a thread.
THREADS = r"""
5192  1795275743.052230146 execve("/work/main/.venv/bin/python", ["/work/main/.venv/bin/python", "prog2.py"], 0x7ffd22527aa0 /* 35 vars */) = 0
5192  1795275743.120535208 bind(3<UNIX-STREAM:[11805]>, {sa_family=AF_UNIX, sun_path="/tmp/st/sock2"}, 16) = 0
5192  1795275743.120767160 listen(3<UNIX-STREAM:[11805,"/tmp/st/sock2"]>, 128) = 0
5192  1795275743.120871284 connect(4<UNIX-STREAM:[11806]>, {sa_family=AF_UNIX, sun_path="/tmp/st/sock2"}, 16) = 0
5192  1795275743.120957057 accept4(3<UNIX-STREAM:[11805,"/tmp/st/sock2"]>, {sa_family=AF_UNIX}, [110 => 2], SOCK_CLOEXEC) = 5<UNIX-STREAM:[11807->11806,"/tmp/st/sock2"]>
5192  1795275743.121079517 sendto(5<UNIX-STREAM:[11807->11806,"/tmp/st/sock2"]>, "srv", 3, 0, NULL, 0) = 3
5192  1795275743.121136629 sendto(4<UNIX-STREAM:[11806->11807]>, "cli", 3, 0, NULL, 0) = 3
5192  1795275743.121227930 sendto(6<UNIX-STREAM:[11808->11809]>, "pair", 4, 0, NULL, 0) = 4
5192  1795275743.121329199 fcntl(4<UNIX-STREAM:[11806->11807]>, F_DUPFD_CLOEXEC, 100) = 100<UNIX-STREAM:[11806->11807]>
5192  1795275743.121385615 write(100<UNIX-STREAM:[11806->11807]>, "fcntl", 5) = 5
5192  1795275743.121434483 dup2(4<UNIX-STREAM:[11806->11807]>, 50) = 50<UNIX-STREAM:[11806->11807]>
5192  1795275743.121485764 write(50<UNIX-STREAM:[11806->11807]>, "dup2", 4) = 4
5192  1795275743.121550300 sendto(8<UDPv6:[11810]>, "v6udp", 5, 0, {sa_family=AF_INET6, sin6_port=htons(8125), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "::1", &sin6_addr), sin6_scope_id=0}, 28) = 5
5192  1795275743.121832360 sendmsg(9<UDP:[11811]>, {msg_name={sa_family=AF_INET, sin_port=htons(8127), sin_addr=inet_addr("127.0.0.1")}, msg_namelen=16, msg_iov=[{iov_base="m", iov_len=1}], msg_iovlen=1, msg_controllen=0, msg_flags=0}, 0) = 1
5192  1795275743.122034697 bind(11<TCP:[11812]>, {sa_family=AF_INET, sin_port=htons(0), sin_addr=inet_addr("127.0.0.1")}, 16) = 0
5192  1795275743.122971787 listen(11<TCP:[127.0.0.1:43443]>, 128) = 0
5192  1795275743.124065132 clone3({flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM|CLONE_SETTLS|CLONE_PARENT_SETTID|CLONE_CHILD_CLEARTID, child_tid=0x7feff1af9990, parent_tid=0x7feff1af9990, exit_signal=0, stack=0x7feff12f9000, stack_size=0x7fff80, tls=0x7feff1af96c0} => {parent_tid=[5193]}, 88) = 5193
5193  1795275743.124603922 prctl(PR_SET_NAME, "rdk:broker-0" <unfinished ...>
5192  1795275743.124645708 clone3({flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM|CLONE_SETTLS|CLONE_PARENT_SETTID|CLONE_CHILD_CLEARTID, child_tid=0x7feff12f8990, parent_tid=0x7feff12f8990, exit_signal=0, stack=0x7feff0af8000, stack_size=0x7fff80, tls=0x7feff12f86c0} <unfinished ...>
5193  1795275743.124681176 <... prctl resumed>) = 0
5192  1795275743.124712383 <... clone3 resumed> => {parent_tid=[5194]}, 88) = 5194
5194  1795275743.125264733 prctl(PR_SET_NAME, "rdk:broker-1" <unfinished ...>
5192  1795275743.125294340 clone3({flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM|CLONE_SETTLS|CLONE_PARENT_SETTID|CLONE_CHILD_CLEARTID, child_tid=0x7feff0af7990, parent_tid=0x7feff0af7990, exit_signal=0, stack=0x7feff02f7000, stack_size=0x7fff80, tls=0x7feff0af76c0} <unfinished ...>
5194  1795275743.125373281 <... prctl resumed>) = 0
5192  1795275743.125412239 <... clone3 resumed> => {parent_tid=[5195]}, 88) = 5195
5193  1795275743.128503507 connect(12<TCP:[12645]>, {sa_family=AF_INET, sin_port=htons(43443), sin_addr=inet_addr("127.0.0.1")}, 16) = 0
5194  1795275743.129842124 connect(13<TCP:[11813]>, {sa_family=AF_INET, sin_port=htons(43443), sin_addr=inet_addr("127.0.0.1")}, 16 <unfinished ...>
5195  1795275743.130807172 prctl(PR_SET_NAME, "rdk:broker-2" <unfinished ...>
5193  1795275743.130830133 sendto(12<TCP:[127.0.0.1:38584->127.0.0.1:43443]>, "t0", 2, 0, NULL, 0 <unfinished ...>
5195  1795275743.131847709 <... prctl resumed>) = 0
5194  1795275743.131865502 <... connect resumed>) = 0
5193  1795275743.131894108 <... sendto resumed>) = 2
5194  1795275743.131905092 sendto(13<TCP:[127.0.0.1:38596->127.0.0.1:43443]>, "t1", 2, 0, NULL, 0 <unfinished ...>
5195  1795275743.132854287 connect(14<TCP:[12646]>, {sa_family=AF_INET, sin_port=htons(43443), sin_addr=inet_addr("127.0.0.1")}, 16 <unfinished ...>
5194  1795275743.133744809 <... sendto resumed>) = 2
5195  1795275743.133872308 <... connect resumed>) = 0
5193  1795275743.133930672 <... close resumed>) = 0
5195  1795275743.134022463 sendto(14<TCP:[127.0.0.1:38598->127.0.0.1:43443]>, "t2", 2, 0, NULL, 0 <unfinished ...>
5194  1795275743.134919633 +++ exited with 0 +++
5195  1795275743.134939666 <... sendto resumed>) = 2
5193  1795275743.134971598 +++ exited with 0 +++
5195  1795275743.135244866 +++ exited with 0 +++
5192  1795275743.135303265 connect(12<TCP:[11826]>, {sa_family=AF_INET, sin_port=htons(43443), sin_addr=inet_addr("127.0.0.1")}, 16) = 0
5192  1795275743.136150012 sendfile(12<TCP:[127.0.0.1:38612->127.0.0.1:43443]>, 13</tmp/st/prog2.py>, [0] => [10], 10) = 10
5192  1795275743.137061751 bind(13<NETLINK:[11827]>, {sa_family=AF_NETLINK, nl_pid=0, nl_groups=00000000}, 12) = 0
5192  1795275743.137168105 sendto(13<NETLINK:[ROUTE:5192]>, [{nlmsg_len=20, nlmsg_type=RTM_GETADDR, nlmsg_flags=NLM_F_REQUEST|NLM_F_DUMP, nlmsg_seq=1795275743, nlmsg_pid=0}, {ifa_family=AF_UNSPEC, ...}], 20, 0, {sa_family=AF_NETLINK, nl_pid=0, nl_groups=00000000}, 12) = 20
5192  1795275743.138174898 vfork( <unfinished ...>
5196  1795275743.138356958 close_range(3, 13, 0) = 0
5196  1795275743.138386896 close_range(15, 2147483647, 0) = 0
5196  1795275743.138757055 execve("/usr/bin/sleep", ["sleep", "5"], 0x7ffd22527aa0 /* 35 vars */ <unfinished ...>
5192  1795275743.139075735 <... vfork resumed>) = 5196
5196  1795275743.139164523 <... execve resumed>) = 0
5196  1795275743.339893979 +++ killed by SIGKILL +++
5192  1795275743.340118836 clone3({flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM|CLONE_SETTLS|CLONE_PARENT_SETTID|CLONE_CHILD_CLEARTID, child_tid=0x7feff0af7990, parent_tid=0x7feff0af7990, exit_signal=0, stack=0x7feff02f7000, stack_size=0x7fff80, tls=0x7feff0af76c0} => {parent_tid=[5197]}, 88) = 5197
5197  1795275743.340655217 execve("/bin/true", ["true", "x"], 0x7ffd22527aa0 /* 35 vars */ <pid changed to 5192 ...>
5192  1795275743.342006420 +++ superseded by execve in pid 5197 +++
5192  1795275743.342228910 <... execve resumed>) = -1 (errno 18446744073709551613)
5192  1795275743.343366753 exit_group(0) = ?
5192  1795275743.343614971 +++ exited with 0 +++
"""

# A raw clone(CLONE_FILES|SIGCHLD) whose child dup2s into the shared table, dup3, splice
# into a socket, a connected unix socket passed to a child with SCM_RIGHTS, a unix
# datagram sendto with an address, and glibc's resolver using sendmmsg.
FDS = r"""
9601  1795276035.137296846 execve("/work/main/.venv/bin/python", ["/work/main/.venv/bin/python", "prog3.py"], 0x7ffd0f3f1c08 /* 35 vars */) = 0
9601  1795276035.212622825 bind(3<UNIX-STREAM:[21164]>, {sa_family=AF_UNIX, sun_path="/tmp/st/sock3"}, 16) = 0
9601  1795276035.212898730 listen(3<UNIX-STREAM:[21164,"/tmp/st/sock3"]>, 128) = 0
9601  1795276035.213010879 connect(4<UNIX-STREAM:[21167]>, {sa_family=AF_UNIX, sun_path="/tmp/st/sock3"}, 16) = 0
9601  1795276035.213134787 clone(child_stack=NULL, flags=CLONE_FILES|SIGCHLD <unfinished ...>
9603  1795276035.213900398 dup2(4<UNIX-STREAM:[21167]>, 60 <unfinished ...>
9601  1795276035.214019282 <... clone resumed>) = 9603
9603  1795276035.214119179 <... dup2 resumed>) = 60<UNIX-STREAM:[21167]>
9603  1795276035.214614634 +++ exited with 0 +++
9601  1795276035.214662333 write(60<UNIX-STREAM:[21167]>, "shared", 6) = 6
9601  1795276035.214775736 dup3(4<UNIX-STREAM:[21167]>, 61, O_CLOEXEC) = 61<UNIX-STREAM:[21167]>
9601  1795276035.214891038 write(6<pipe:[21180]>, "spliced", 7) = 7
9601  1795276035.214943707 splice(5<pipe:[21180]>, NULL, 4<UNIX-STREAM:[21167]>, NULL, 7, 0) = 7
9601  1795276035.215070219 clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD, child_tidptr=0x7f1957446e50) = 9604
9601  1795276035.215797080 sendmsg(7<UNIX-STREAM:[21184->21185]>, {msg_name=NULL, msg_namelen=0, msg_iov=[{iov_base="x", iov_len=1}], msg_iovlen=1, msg_control=[{cmsg_len=20, cmsg_level=SOL_SOCKET, cmsg_type=SCM_RIGHTS, cmsg_data=[4<UNIX-STREAM:[21167]>]}], msg_controllen=24, msg_flags=0}, 0) = 1
9604  1795276035.216397779 write(9<UNIX-STREAM:[21167]>, "passed", 6) = 6
9604  1795276035.216893107 +++ exited with 0 +++
9601  1795276035.216970380 sendto(9<UNIX:[21194]>, "<13>hi", 6, 0, {sa_family=AF_UNIX, sun_path="/tmp/st/nolog"}, 16) = -1 ENOENT (No such file or directory)
9601  1795276035.220716202 connect(10<UNIX-STREAM:[21196]>, {sa_family=AF_UNIX, sun_path="/var/run/nscd/socket"}, 110) = -1 ENOENT (No such file or directory)
9601  1795276035.221279619 connect(11<UDP:[21204]>, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.255.255.53")}, 16) = 0
9601  1795276035.221444730 sendmmsg(11<UDP:[192.0.2.2:51174->10.255.255.53:53]>, [{msg_hdr={msg_name=NULL, msg_namelen=0, msg_iov=[{iov_base="\233\260\1\0\0\1\0\0\0\0\0\0\rsvctrace-test\7invalid\0\0\1\0\1", iov_len=39}], msg_iovlen=1, msg_controllen=0, msg_flags=0}, msg_len=39}, {msg_hdr={msg_name=NULL, msg_namelen=0, msg_iov=[{iov_base="\212\265\1\0\0\1\0\0\0\0\0\0\rsvctrace-test\7invalid\0\0\34\0\1", iov_len=39}], msg_iovlen=1, msg_controllen=0, msg_flags=0}, msg_len=39}], 2, MSG_NOSIGNAL) = 2
9601  1795276035.236209844 +++ exited with 0 +++
"""


def test_tcp_connect_send_and_server_reply():
    out = events(parse(BASIC))
    assert out[0] == Event("listen", None, 1795275713330046059, 4983, 4983, "python",
                           tcp("127.0.0.1", 57095), 0, 57095)
    assert out[1] == Event("connect", None, 1795275713338361594, 4983, 4983, "python",
                           tcp("127.0.0.1", 57095), 0, None)
    # a connection's first send carries the bytes strace printed of it
    assert out[2] == Event("send", None, 1795275713339439174, 4983, 4983, "python",
                           tcp("127.0.0.1", 57095), 5, 54404, first_bytes=b"hello")
    # the accepted socket replies to the client's ephemeral port, from the listener's port
    assert (out[3].dest, out[3].local_port) == (tcp("127.0.0.1", 54404), 57095)


def test_connect_results_refused_and_in_progress():
    connects = [(e.dest.port, e.result) for e in events(parse(BASIC), "connect")
                if e.dest.transport == "tcp" and e.dest.family == "inet"]
    # ECONNREFUSED and a non-blocking connect's EINPROGRESS are attempts all the same
    assert connects == [(57095, 0), (1, -111), (57095, -115)]


def test_ipv6_listen_connect_send():
    out = [e for e in events(parse(BASIC)) if e.dest.family == "inet6"]
    assert [(e.kind, e.dest, e.result, e.local_port) for e in out] == [
        ("listen", tcp("::1", 33277), 0, 33277),
        ("connect", tcp("::1", 33277), 0, None),
        ("send", tcp("::1", 33277), 2, 49666),
    ]


def test_udp_unconnected_sendto_connected_send_and_sendmsg_msg_name():
    basic = [(e.kind, e.dest, e.local_port) for e in events(parse(BASIC))
             if e.dest.transport == "udp"]
    assert basic == [("send", udp("127.0.0.1", 8125), None),
                     ("connect", udp("127.0.0.1", 8126), None),
                     ("send", udp("127.0.0.1", 8126), 35045)]
    firsts = [e.first_bytes for e in events(parse(BASIC), "send") if e.dest.transport == "udp"]
    assert all(firsts), "the first datagram to each destination carries its bytes"
    threads = [(e.kind, e.dest) for e in events(parse(THREADS)) if e.dest.transport == "udp"]
    assert threads == [("send", udp("::1", 8125)), ("send", udp("127.0.0.1", 8127))]


def test_unix_sends_are_joined_to_the_connect_path_and_abstract_names():
    out = [(e.kind, e.dest.address, e.result) for e in events(parse(BASIC), "send")
           if e.dest.family == "unix" and e.pid == e.tid == 4983]
    assert out == [("send", "/tmp/st/sock", 4), ("send", "@abstr", 3),
                   ("send", "/tmp/st/sock", 3),   # write() on the F_DUPFD_CLOEXEC copy
                   ("send", "/tmp/st/sock", 3)]   # sendmsg
    listens = [e.dest for e in events(parse(BASIC), "listen") if e.dest.family == "unix"]
    assert listens == [unix("/tmp/st/sock"), unix("@abstr")]


def test_fork_child_sends_on_inherited_unix_fd():
    records = parse(BASIC)
    fork = [p for p in procs(records) if p.kind == "fork" and p.pid == 4984]
    assert fork == [ProcessEvent("fork", None, 1795275713351070504, 4984, 4983, "python")]
    child = [e for e in events(records) if e.pid == 4984]
    assert [(e.kind, e.dest, e.result, e.tid) for e in child] == [
        ("send", unix("/tmp/st/sock"), 5, 4984)]
    exits = [p for p in procs(records) if p.kind == "exit"]
    assert [(p.pid, p.ppid) for p in exits] == [(4984, 4983), (4986, 4983), (4983, 0)]


def test_thread_maps_tid_to_tgid_and_its_exit_is_not_a_process_exit():
    records = parse(BASIC)
    thread = [e for e in events(records) if e.tid == 4985]
    assert [(e.pid, e.dest) for e in thread] == [(4983, unix("@abstr"))]
    assert 4985 not in {p.pid for p in procs(records)}


def test_a_new_thread_is_announced_with_its_birth_time_and_creator():
    births = [p for p in procs(parse(BASIC)) if p.kind == "thread"]
    assert births == [ProcessEvent("thread", None, 1795275713355049064, 4983, 4983, "python",
                                   tid=4985)]
    # unfinished clone3: born at the call's entry, before the thread's first line
    threads = [(p.tid, p.pid, p.ppid, p.wall_ns) for p in procs(parse(THREADS))
               if p.kind == "thread"]
    assert threads == [(5193, 5192, 5192, 1795275743124065132),
                       (5194, 5192, 5192, 1795275743124645708),
                       (5195, 5192, 5192, 1795275743125294340),
                       (5197, 5192, 5192, 1795275743340118836)]


def test_a_thread_created_by_a_thread_names_its_creator_and_a_reused_tid_is_announced_again():
    log = r"""
100  1700000000.000000001 execve("/bin/py", ["py"], 0x7f /* 1 var */) = 0
100  1700000000.000000002 clone3({flags=CLONE_VM|CLONE_FILES|CLONE_THREAD, exit_signal=0} => {parent_tid=[101]}, 88) = 101
101  1700000000.000000003 clone3({flags=CLONE_VM|CLONE_FILES|CLONE_THREAD, exit_signal=0} => {parent_tid=[102]}, 88) = 102
102  1700000000.000000004 +++ exited with 0 +++
100  1700000000.000000005 clone3({flags=CLONE_VM|CLONE_FILES|CLONE_THREAD, exit_signal=0} => {parent_tid=[102]}, 88) = 102
"""
    threads = [(p.tid, p.ppid, p.wall_ns % 10) for p in procs(parse(log))
               if p.kind == "thread"]
    assert threads == [(101, 100, 2), (102, 101, 3), (102, 100, 5)]


def test_vfork_child_lines_before_the_parent_return_are_replayed_after_the_fork():
    records = [p for p in procs(parse(BASIC)) if p.pid == 4986]
    assert records == [
        ProcessEvent("fork", None, 1795275713357941420, 4986, 4983, "python"),
        ProcessEvent("exec", None, 1795275713359486252, 4986, 4983, "true", ("true",)),
        ProcessEvent("exit", None, 1795275713361069573, 4986, 4983, "true"),
    ]


def test_root_gets_a_fork_event_from_strace_pid_and_exec_cmdline():
    records = procs(parse(BASIC, root_ppid=4980))
    assert records[:2] == [
        ProcessEvent("fork", None, 1795275713274676711, 4983, 4980),
        ProcessEvent("exec", None, 1795275713274676711, 4983, 4980, "python",
                     ("/work/main/.venv/bin/python", "prog.py")),
    ]


def test_prctl_thread_names_and_interleaved_unfinished_calls():
    out = [(e.kind, e.tid, e.comm, e.dest.port, e.local_port, e.wall_ns)
           for e in events(parse(THREADS)) if e.tid in (5193, 5194, 5195)]
    assert out == [
        ("connect", 5193, "rdk:broker-0", 43443, None, 1795275743128503507),
        # unfinished + resumed: one record at the entry time, the result from the resume
        ("connect", 5194, "rdk:broker-1", 43443, None, 1795275743129842124),
        ("send", 5193, "rdk:broker-0", 43443, 38584, 1795275743130830133),
        ("send", 5194, "rdk:broker-1", 43443, 38596, 1795275743131905092),
        ("connect", 5195, "rdk:broker-2", 43443, None, 1795275743132854287),
        ("send", 5195, "rdk:broker-2", 43443, 38598, 1795275743134022463),
    ]
    assert {e.pid for e in events(parse(THREADS)) if e.tid != 5192} == {5192}


def test_unix_server_replies_and_socketpairs_are_not_contacts_but_dups_are():
    unix_sends = [(e.dest.address, e.result) for e in events(parse(THREADS), "send")
                  if e.dest.family == "unix"]
    assert unix_sends == [("/tmp/st/sock2", 3), ("/tmp/st/sock2", 5), ("/tmp/st/sock2", 4)]


def test_sendfile_and_netlink():
    out = [(e.kind, e.dest, e.result) for e in events(parse(THREADS))
           if e.tid == 5192 and e.kind == "send"][-2:]
    assert out == [("send", tcp("127.0.0.1", 43443), 10),
                   ("send", Destination("netlink", "other", "ROUTE"), 20)]


def test_killed_child_and_exec_from_a_thread():
    records = [p for p in procs(parse(THREADS)) if p.kind != "thread"]
    assert [(p.kind, p.pid, p.comm, p.cmdline) for p in records] == [
        ("exec", 5192, "python", ("/work/main/.venv/bin/python", "prog2.py")),
        ("fork", 5196, "python", ()),
        ("exec", 5196, "sleep", ("sleep", "5")),
        ("exit", 5196, "sleep", ()),               # +++ killed by SIGKILL +++
        ("exec", 5192, "true", ("true", "x")),     # thread 5197 exec'd: pid is now 5192
        ("exit", 5192, "true", ()),
    ]
    assert records[2].wall_ns == 1795275743138757055  # entry time of the unfinished execve


def test_clone_files_shares_the_fd_table_dup3_splice_scm_rights_sendmmsg():
    out = [(e.kind, e.pid, e.dest, e.result) for e in events(parse(FDS))]
    assert out == [
        ("listen", 9601, unix("/tmp/st/sock3"), 0),
        ("connect", 9601, unix("/tmp/st/sock3"), 0),
        ("send", 9601, unix("/tmp/st/sock3"), 6),    # fd 60, dup2'd by the CLONE_FILES child
        ("send", 9601, unix("/tmp/st/sock3"), 7),    # splice(pipe -> socket)
        ("send", 9604, unix("/tmp/st/sock3"), 6),    # received with SCM_RIGHTS as fd 9
        ("send", 9601, unix("/tmp/st/nolog"), -2),   # datagram with an address, ENOENT
        ("connect", 9601, unix("/var/run/nscd/socket"), -2),
        ("connect", 9601, udp("10.255.255.53", 53), 0),
        ("send", 9601, udp("10.255.255.53", 53), 2),  # sendmmsg: result counts messages
    ]


def test_fd_table_alone_follows_dup_fcntl_close_fork_and_clone_files():
    """Without -yy decorations only the fd table can join sends to connects."""
    basic = strip_yy(BASIC)
    assert "UNIX-STREAM" not in basic and "write(16, " in basic
    out = [(e.pid, e.tid, e.dest.address) for e in events(parse(basic), "send")
           if e.dest.family == "unix"]
    assert out == [(4983, 4983, "/tmp/st/sock"), (4983, 4983, "@abstr"),
                   (4983, 4983, "/tmp/st/sock"),   # F_DUPFD_CLOEXEC copy, fd 16
                   (4984, 4984, "/tmp/st/sock"),   # forked child: a copy of the table
                   (4983, 4985, "@abstr"),         # thread: the same table
                   (4983, 4983, "/tmp/st/sock")]
    fds = [(e.pid, e.dest.address, e.result) for e in events(parse(strip_yy(FDS)), "send")]
    assert fds[:2] == [(9601, "/tmp/st/sock3", 6), (9601, "/tmp/st/sock3", 7)]


def test_fork_copies_the_table_and_close_forgets():
    log = strip_yy(r"""
100  1700000000.000000001 connect(3, {sa_family=AF_UNIX, sun_path="/run/a"}, 9) = 0
100  1700000000.000000002 clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD, child_tidptr=0x7f) = 101
101  1700000000.000000003 dup2(3, 7) = 7
101  1700000000.000000004 close(3) = 0
101  1700000000.000000005 write(3, "x", 1) = -1 EBADF (Bad file descriptor)
101  1700000000.000000006 write(7, "x", 1) = 1
100  1700000000.000000007 write(7, "x", 1) = 1
100  1700000000.000000008 write(3, "x", 1) = 1
100  1700000000.000000009 close_range(3, ~0U, 0) = 0
100  1700000000.000000010 write(3, "x", 1) = 1
""")
    out = [(e.pid, e.wall_ns % 100, e.result) for e in events(parse(log), "send")]
    assert out == [(101, 6, 1), (100, 8, 1)]


def test_stale_fd_entry_is_not_trusted_when_the_inode_changed():
    log = r"""
100  1700000000.000000001 connect(5<UNIX-STREAM:[900]>, {sa_family=AF_UNIX, sun_path="/run/a"}, 9) = 0
100  1700000000.000000002 execve("/bin/sh", ["sh"], 0x7f /* 1 var */) = 0
100  1700000000.000000003 sendto(5<UNIX-STREAM:[901->902]>, "x", 1, 0, NULL, 0) = 1
100  1700000000.000000004 sendto(9<UNIX-STREAM:[900]>, "x", 1, 0, NULL, 0) = 1
"""
    # fd 5 was closed on exec (CLOEXEC, unseen) and reused by a socketpair; inode 900
    # is the connected socket wherever it shows up.
    out = [(e.wall_ns % 10, e.dest.address) for e in events(parse(log), "send")]
    assert out == [(4, "/run/a")]


def test_orphan_task_without_a_clone_result_is_adopted_at_finish():
    log = r"""
100  1700000000.000000001 execve("/bin/sh", ["sh"], 0x7f /* 1 var */) = 0
100  1700000000.000000002 clone(child_stack=NULL, flags=SIGCHLD <unfinished ...>
200  1700000000.000000003 connect(3<TCP:[5]>, {sa_family=AF_INET, sin_port=htons(6379), sin_addr=inet_addr("10.0.0.2")}, 16) = 0
100  1700000000.000000004 <... clone resumed>) = ?
"""
    parser = StraceParser()
    live: list = []
    for line in log.strip().splitlines():
        live += parser.feed(line)
    assert [r.kind for r in live] == ["exec"]  # 200 is held back: whose child is it?
    late = parser.finish()
    assert late == [Event("connect", None, 1700000000000000003, 200, 200, "",
                          tcp("10.0.0.2", 6379), 0)]
    assert parser.stats.orphans_adopted == 1


def test_clone_parent_and_numeric_flags():
    log = r"""
100  1700000000.000000001 execve("/bin/sh", ["sh"], 0x7f /* 1 var */) = 0
100  1700000000.000000002 clone(child_stack=NULL, flags=0x10000|CLONE_VM) = 101
101  1700000000.000000003 clone(child_stack=NULL, flags=CLONE_PARENT|SIGCHLD) = 102
"""
    out = procs(parse(log, root_ppid=1))
    assert [(p.kind, p.pid, p.ppid, p.tid) for p in out] == [
        ("fork", 100, 1, 0), ("exec", 100, 1, 0),
        ("thread", 100, 100, 101),   # 0x10000 is CLONE_THREAD
        ("fork", 102, 1, 0)]


def test_microsecond_timestamps_and_signals_and_garbage():
    log = r"""
9949  1795276049.540271 connect(3<TCP:[23614]>, {sa_family=AF_INET, sin_port=htons(1), sin_addr=inet_addr("127.0.0.1")}, 16) = -1 ECONNREFUSED (Connection refused)
9949  1795276049.541000 --- SIGCHLD {si_signo=SIGCHLD, si_code=CLD_EXITED, si_pid=1, si_uid=0, si_status=0, si_utime=0, si_stime=0} ---
strace: Process 9950 attached
9904  1795276049.279937225 +++ killed by SIGABRT (core dumped) +++
"""
    parser = StraceParser()
    out: list = []
    for line in log.strip().splitlines():
        out += parser.feed(line)
    out += parser.finish()
    assert out[0].wall_ns == 1795276049540271000 and out[0].result == -111
    assert parser.stats.unparsed == 1 and parser.stats.lines == 4
    assert [(r.kind, r.pid) for r in out[1:]] == [("exit", 9904)]  # adopted orphan


def test_restart_and_question_mark_results_are_not_events():
    log = r"""
100  1700000000.000000001 connect(3<TCP:[5]>, {sa_family=AF_INET, sin_port=htons(5432), sin_addr=inet_addr("127.0.0.1")}, 16) = ? ERESTARTSYS (To be restarted if SA_RESTART is set)
100  1700000000.000000002 connect(3<TCP:[5]>, {sa_family=AF_INET, sin_port=htons(5432), sin_addr=inet_addr("127.0.0.1")}, 16 <unfinished ...>
100  1700000000.000000003 +++ killed by SIGKILL +++
"""
    assert [r.kind for r in parse(log)] == ["exit"]


def test_udp_bind_to_a_fixed_port_is_a_listener():
    log = r"""
100  1700000000.000000001 bind(3<UDP:[7]>, {sa_family=AF_INET, sin_port=htons(8125), sin_addr=inet_addr("0.0.0.0")}, 16) = 0
100  1700000000.000000002 bind(4<UDP:[8]>, {sa_family=AF_INET, sin_port=htons(0), sin_addr=inet_addr("0.0.0.0")}, 16) = 0
"""
    assert [(e.kind, e.dest, e.local_port) for e in events(parse(log))] == [
        ("listen", udp("0.0.0.0", 8125), 8125)]


def test_strings_truncation_and_escapes():
    # -s 4 truncates strings and the argv array (real output of `strace -s 4 /bin/echo 1..8`)
    line = ('6000  1795276000.000000001 execve("/bin/echo", ["/bin"..., "1", "2", "3", ...], '
            '0x7ffd41de5060 /* 35 vars */) = 0')
    (exe,) = parse(line)
    assert (exe.comm, exe.cmdline) == ("echo", ("/bin", "1", "2", "3"))
    assert _unquote(r"caf\303\251 \"q\" \\ \x41\n") == 'café "q" \\ A\n'
    assert parse_strings(r'["a\"b", "c"..., ...]') == ['a"b', "c"]


def test_comm_is_cut_to_the_kernel_length_and_inherited_by_threads():
    log = r"""
100  1700000000.000000001 execve("/usr/bin/a-very-long-program-name", ["x"], 0x7f /* 1 var */) = 0
100  1700000000.000000002 clone3({flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD, exit_signal=0} => {parent_tid=[101]}, 88) = 101
101  1700000000.000000003 connect(3<UNIX-STREAM:[9]>, {sa_family=AF_UNIX, sun_path="/var/run/postgresql/.s.PGSQL.5432"}, 110) = 0
"""
    (event,) = events(parse(log))
    assert (event.pid, event.tid, event.comm) == (100, 101, "a-very-long-pro")
    assert event.dest == unix("/var/run/postgresql/.s.PGSQL.5432")


@pytest.mark.parametrize("line", [
    "", "\n", "garbage", "100  1.5 ???", "100  1.5 <... nothing resumed>) = 0",
])
def test_odd_lines_never_raise(line):
    parser = StraceParser()
    assert parser.feed(line) == []
    assert parser.finish() == []


def test_a_line_that_trips_the_parser_is_counted_and_parsing_goes_on():
    log = r"""
100  1700000000.000000001 execve("/bin/sh", ["sh"], 0x7f /* 1 var */) = 0
100  1700000000.000000002 clone(child_stack=NULL, flags=0CLONE_CHILD_CLEARTID|SIGCHLD, child_tidptr=0x7f) = 101
100  1700000000.000000003 connect(3<TCP:[5]>, {sa_family=AF_INET, sin_port=htons(6379), sin_addr=inet_addr("10.0.0.2")}, 16) = 0
"""
    parser = StraceParser()
    out: list = []
    for line in log.strip().splitlines():
        out += parser.feed(line)
    assert [e.dest.port for e in events(out)] == [6379]


def test_a_parser_bug_on_one_line_never_escapes_feed(monkeypatch):
    parser = StraceParser()
    parser.feed('100  1700000000.000000001 execve("/bin/sh", ["sh"], 0x7f) = 0')

    def broken(*args):
        raise KeyError("bug")
    monkeypatch.setitem(parser._handlers, "bind", broken)
    bad = ('100  1700000000.000000002 bind(3<TCP:[5]>, {sa_family=AF_INET, '
           'sin_port=htons(80), sin_addr=inet_addr("0.0.0.0")}, 16) = 0')
    assert parser.feed(bad) == []
    good = ('100  1700000000.000000003 connect(3<TCP:[5]>, {sa_family=AF_INET, '
            'sin_port=htons(6379), sin_addr=inet_addr("10.0.0.2")}, 16) = 0')
    assert [e.dest.port for e in events(parser.feed(good))] == [6379]
    assert parser.stats.errors == 1
    assert parser.stats.first_error == (bad, "KeyError: 'bug'")


# The backend's narrow trace set (every stop delays a tracee and changes races): no
# close/dup/fcntl/prctl/write, plus set_robust_list (the first call of a glibc thread or
# fork child). A dup'd fd sends, a thread named with prctl(PR_SET_NAME) sends, and
# os.write() on the socket is not traced.
NARROW = r"""
24128 1795894107.667548607 execve("/work/main/.venv/bin/python", ["/work/main/.venv/bin/python", "newlog.py"], 0x7fffdf19f530 /* 35 vars */) = 0
24128 1795894107.668266410 set_robust_list(0x7feeb1894e60, 24) = 0
24128 1795894107.692398599 bind(3<UNIX-STREAM:[1194159]>, {sa_family=AF_UNIX, sun_path="/tmp/st/sock4"}, 16) = 0
24128 1795894107.692723170 listen(3<UNIX-STREAM:[1194159,"/tmp/st/sock4"]>, 128) = 0
24128 1795894107.692852282 connect(4<UNIX-STREAM:[1194160]>, {sa_family=AF_UNIX, sun_path="/tmp/st/sock4"}, 16) = 0
24128 1795894107.692985158 sendto(5<UNIX-STREAM:[1194160]>, "dup", 3, 0, NULL, 0) = 3
24128 1795894107.693181940 clone3({flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM|CLONE_SETTLS|CLONE_PARENT_SETTID|CLONE_CHILD_CLEARTID, child_tid=0x7feeb0c7e990, parent_tid=0x7feeb0c7e990, exit_signal=0, stack=0x7feeb047e000, stack_size=0x7fff80, tls=0x7feeb0c7e6c0} => {parent_tid=[24129]}, 88) = 24129
24129 1795894107.693397775 set_robust_list(0x7feeb0c7e9a0, 24) = 0
24129 1795894107.693637976 sendto(4<UNIX-STREAM:[1194160]>, "thread", 6, 0, NULL, 0) = 6
24129 1795894107.693849429 +++ exited with 0 +++
24128 1795894107.699061802 +++ exited with 0 +++
"""


def test_narrow_trace_set_joins_dups_by_inode_and_asks_thread_names_once():
    asked = []

    def thread_name(tgid: int, tid: int) -> str | None:
        asked.append((tgid, tid))
        return "rdk:broker-1"  # what /proc/24128/task/24129/comm said
    parser = StraceParser(fd_lifetimes=False, thread_name=thread_name)
    out: list = []
    for line in NARROW.strip().splitlines():
        out += parser.feed(line)
    assert [(e.kind, e.tid, e.comm, e.dest, e.result) for e in events(out)] == [
        ("listen", 24128, "python", unix("/tmp/st/sock4"), 0),
        ("connect", 24128, "python", unix("/tmp/st/sock4"), 0),
        ("send", 24128, "python", unix("/tmp/st/sock4"), 3),       # fd 5: a dup, by inode
        ("send", 24129, "rdk:broker-1", unix("/tmp/st/sock4"), 6),
    ]
    assert asked == [(24128, 24129)]  # threads only, once each
    assert parser.stats.unparsed == parser.stats.errors == 0


def test_a_thread_that_ended_keeps_its_creators_name():
    parser = StraceParser(fd_lifetimes=False, thread_name=lambda tgid, tid: None)
    out: list = []
    for line in NARROW.strip().splitlines():
        out += parser.feed(line)
    assert [e.comm for e in events(out, "send")] == ["python", "python"]


def test_without_fd_lifetimes_a_bare_fd_number_is_not_trusted():
    # close() is not traced: fd 3 may have been closed and reused since the connect.
    log = r"""
100  1700000000.000000001 connect(3, {sa_family=AF_UNIX, sun_path="/run/a"}, 9) = 0
100  1700000000.000000002 sendto(3, "x", 1, 0, NULL, 0) = 1
"""
    assert [e.wall_ns % 10 for e in events(parse(log), "send")] == [2]  # with close traced
    assert events(parse(log, fd_lifetimes=False), "send") == []
