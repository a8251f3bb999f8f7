/* svctrace.h: the kernel/user contract of the eBPF backend (one ring buffer record).
 *
 * Fixed-width fields with no implicit padding, so user space decodes the record with one
 * struct format (svctrace.capture.ebpf: _EVENT) and checks the size on every record; the
 * kinds, transports and counters below are its _KINDS, _PROTOS and _COUNTERS.
 * tests/test_kernel_contract.py checks every field, kind and counter against the Python
 * side: change both in the same commit.
 */
#ifndef SVCTRACE_H
#define SVCTRACE_H

#define SVCT_COMM_LEN 16
#define SVCT_PATH_LEN 108 /* sizeof(((struct sockaddr_un *)0)->sun_path) */
#define SVCT_DATA_LEN 256 /* bytes kept of a socket's first send: a TLS ClientHello's SNI
                           * and an HTTP request's Host header fit in it */

/* kind: what happened */
enum svct_kind {
	SVCT_CONNECT = 1, /* connect() returned; result = 0 or -errno (-115 EINPROGRESS) */
	SVCT_SEND = 2,    /* sock:sock_send_length; result = bytes sent or -errno */
	SVCT_LISTEN = 3,  /* a TCP socket entered TCP_LISTEN; lport/addr = bound address */
	SVCT_FORK = 4,    /* pid = new child tgid, ppid = parent tgid */
	SVCT_EXIT = 5,    /* the thread group pid ended */
	SVCT_EXEC = 6,    /* pid exec'd: comm = new name, addr.path = filename as passed */
	SVCT_CONNECT_RESULT = 7, /* a non-blocking TCP connect failed later: a copy of its
	                          * CONNECT (same ts, pid, tid, destination), result = -errno */
	SVCT_THREAD = 8,  /* thread tid was born in process pid, created by thread ppid */
	SVCT_FREEZE = 9,  /* --stacks: process pid was stopped (SIGSTOP) right after the record
	                   * this copies (result = its kind: CONNECT, SEND or THREAD; count =
	                   * marker epoch + 1); user space must send SIGCONT */
	SVCT_DNS_REPLY = 10, /* a struct svct_dns: bytes the tree received on a socket it sent
	                      * a query to port 53 from (head.addr/dport: that server) */
	SVCT_NSS_RESULT = 11, /* a struct svct_nss: getaddrinfo() of the tree returned */
};

/* proto: transport, decoded from sk_protocol (sends) or from the connect's TCP state
 * change (connects; see sys_exit_connect in svctrace.bpf.c) */
enum svct_proto {
	SVCT_P_UNKNOWN = 0,
	SVCT_P_TCP = 1,
	SVCT_P_UDP = 2,
	SVCT_P_UNIX = 3,
	SVCT_P_OTHER = 4,
};

/* counters[] slots, summed over CPUs by user space: stats() reports CNT_X as "x" */
enum svct_counter {
	CNT_LOST_EVENTS = 0,		/* bpf_ringbuf_reserve failed: the event is lost
					 * (and, for a traced process, its loss window
					 * widened: struct svct_loss) */
	CNT_SENDS_UNKNOWN_DEST = 1,	/* a send whose destination cannot be known (not
					 * emitted) */
	CNT_UNTRACED_CHILDREN = 2,	/* a child not traced because `traced` was full */
	CNT_FOREIGN_PIDNS_EVENTS = 3,	/* an event of a traced process in another PID
					 * namespace (a deeper one it created): its pids
					 * cannot be told, not emitted */
	CNT_FOLDED_SENDS = 4,		/* sends folded into a socket's record (fold_send),
					 * or a destination's (SVCT_JOIN: fold_dest) */
	CNT_TAILED_SENDS = 5,		/* folded sends reported in tail records; FOLDED -
					 * TAILED after the final drain = folded sends whose
					 * record the LRU map evicted */
	CNT_FOLDED_CONNECTS = 6,	/* SVCT_JOIN: connects folded (fold_dest) */
	CNT_TAILED_CONNECTS = 7,	/* folded connects reported in tail records */
	CNT_SLOTS = 8,
};

struct svct_event {
	__u64 ts_ns;             /* bpf_ktime_get_ns(): CLOCK_MONOTONIC; connect, fork and
	                          * thread: when the call began */
	/* pids and tids are those of the runner's PID namespace (a container's own) */
	__u32 pid;               /* tgid (FORK: the child) */
	__u32 tid;               /* thread id (FORK: the child; THREAD: the new thread) */
	__u32 ppid;              /* FORK: parent tgid; THREAD: creating thread; a SEND tail
	                          * (SVCT_JOIN): how many of its sends were other sockets'
	                          * first sends with the first bytes of the record it
	                          * continues (same pid, destination and lport); else 0 */
	__s32 result;            /* CONNECT/SEND: return value; else 0 */
	char comm[SVCT_COMM_LEN];/* thread name (task->comm) of the acting thread */
	__u16 dport;             /* destination port, host order (inet only) */
	__u16 lport;             /* local port, host order (inet sends and LISTEN) */
	__u8 kind;               /* enum svct_kind */
	__u8 family;             /* AF_* number of the address (AF_INET 2, AF_INET6 10, AF_UNIX 1) */
	__u8 proto;              /* enum svct_proto */
	__u8 addr_len;           /* bytes of addr in use: 4, 16, unix path bytes; 0 = unknown.
	                          * A unix path starting with NUL is an abstract name whose
	                          * bytes are addr.path[1..addr_len-1] (not NUL-terminated). */
	union {
		__u8 v4[4];              /* network order */
		__u8 v6[16];             /* network order */
		char path[SVCT_PATH_LEN];/* sun_path as given to connect/sendto, or exec filename */
	} addr;
	__u32 count;             /* SEND, CONNECT: how many calls this record stands for. 1,
	                          * or for a "tail" record the calls that followed the first
	                          * one in the same marker epoch (ts/tid = the last one): sends
	                          * on the same socket (SVCT_JOIN: of one thread to the same
	                          * destination); connects of one thread to the same
	                          * destination with the same result (SVCT_JOIN) */
};                               /* sizeof == 160 */

/* Loss windows: map `losses`, one entry per (process, marker epoch) that lost records
 * because the ring buffer was full. User space drains it at every poll (lookup and
 * delete) and charges each window to the test phases of the owning pytest process that
 * overlap [first_ts, last_ts]. CNT_LOST_EVENTS less the windows' n = losses no window
 * kept (the map was full, or a loss raced the drain of its window). */
struct svct_loss_key {
	__u32 pid;               /* acting tgid in the runner's PID namespace */
	__u32 _pad;
	__u64 epoch;             /* marker epoch when the records were lost */
};                               /* sizeof == 16 */

struct svct_loss {
	__u64 first_ts;          /* bpf_ktime_get_ns() of the first and last loss */
	__u64 last_ts;
	__u64 n;                 /* records lost */
};                               /* sizeof == 24 */

/* Host names the tree resolves: the first SVCT_DNS_MAX bytes of each receive on a socket
 * the tree connected or sent to port 53 (UDP or TCP). User space parses them (join/dns.py);
 * a longer reply is cut, and its parse says so. Other sockets' receives cost one map
 * lookup, and nothing at all until the tree has used port 53 once. */
#define SVCT_DNS_MAX 512
struct svct_dns {
	struct svct_event head;  /* kind SVCT_DNS_REPLY; result = bytes received */
	__u16 len;               /* bytes of data in use (<= SVCT_DNS_MAX) */
	__u8 stream;             /* 1: TCP (data is stream bytes with 2-byte length prefixes) */
	__u8 _pad[5];
	__u8 data[SVCT_DNS_MAX];
};                               /* sizeof == 680 */

/* getaddrinfo(name) in the tree returned these addresses (the hosts file, nss modules, or
 * DNS behind them): a uprobe and a uretprobe on the C library the command maps. */
#define SVCT_NSS_ADDRS 8
#define SVCT_NSS_ADDR_BYTES 128 /* SVCT_NSS_ADDRS addresses of 16 bytes each */
#define SVCT_NAME_LEN 256
struct svct_nss {
	struct svct_event head;  /* kind SVCT_NSS_RESULT, stamped when the call returned;
	                          * result 1: the process was stopped (gai_hold), user space
	                          * must send SIGCONT */
	__u8 naddr;              /* entries of the result list read (<= SVCT_NSS_ADDRS) */
	__u8 _pad[7];
	__u8 family[SVCT_NSS_ADDRS]; /* AF_INET, AF_INET6, or 0: an entry of another family */
	__u8 addr[SVCT_NSS_ADDR_BYTES]; /* entry i at 16 * i, network order; AF_INET uses
	                                 * the first 4 bytes of its 16 */
	char name[SVCT_NAME_LEN];      /* the node asked for, NUL-terminated */
};                               /* sizeof == 560 */

/* The first send of a process on a socket (the first to each destination, for an
 * unconnected datagram socket): its SEND record, then the first bytes it sent, read from
 * the syscall's own buffer (write, sendto, sendmsg/sendmmsg and writev: their first iovec).
 * User space recognises the protocol from them and keeps nothing else of them. Only this
 * record is larger; every other send costs what it did. */
struct svct_first {
	struct svct_event e;     /* kind SVCT_SEND */
	__u32 data_len;          /* bytes of data in use (0: none could be read) */
	__u32 _pad;
	__u8 data[SVCT_DATA_LEN];
};                               /* sizeof == 424 */

#endif
