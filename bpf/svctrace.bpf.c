/* svctrace.bpf.c: connects, sends and the process tree of the traced command (bcc, tracepoints).
 *
 * Tracepoints only: on the target kernels kprobes are compiled out and fentry/LSM fail to
 * load (EPERM). Settings come as -D defines from tracer/svctrace/capture/ebpf.py:
 *   OFF_SKC_DADDR, OFF_SKC_DPORT, OFF_SKC_NUM, OFF_SKC_V6_DADDR  byte offsets in struct
 *       sock_common, read from the running kernel's BTF (installed headers may be older)
 *   OFF_SK_ERR      offset of sk_err in struct sock (BTF; it moves between versions)
 *   OFF_UNIX_PEER, OFF_UNIX_ADDR, OFF_UNIX_ADDR_LEN, OFF_UNIX_ADDR_NAME  struct unix_sock
 *       peer/addr and struct unix_address len/name (BTF): the peer path of a unix send
 *   OFF_TASK_FILES, OFF_FILES_FDT, OFF_FDT_FD, OFF_FILE_PRIVATE, OFF_SOCKET_TYPE  the fd
 *       table walk that tells a failed inet connect's socket type (BTF)
 *   PIDNS_DEV, PIDNS_INO  device and inode of the runner's PID namespace: every pid and
 *       tid reported is the one seen there (a container's own pids, not the host's)
 *   RINGBUF_PAGES   ring buffer size in pages (power of two)
 *   HAS_GROUP_DEAD  sched_process_exit has the group_dead field (6.x tracefs format)
 *   SVCT_STACKS     `svctrace run --stacks`: stop a process (SIGSTOP) right
 *       after its first contact with a destination, and a thread's creator right after
 *       the clone, once per marker epoch; user space dumps its Python stacks and resumes
 *       it. Without the define none of this is compiled.
 *   SVCT_FIRST_BYTES  keep the first bytes of a process's first send on a socket (struct
 *       svct_first), read through the task's saved user registers: OFF_REGS_NR,
 *       OFF_REGS_ARG2, OFF_REGS_ARG3 (struct pt_regs, BTF) and the syscall numbers
 *       SVCT_NR_WRITE, SVCT_NR_WRITEV, SVCT_NR_SENDTO, SVCT_NR_SENDMSG, SVCT_NR_SENDMMSG,
 *       all per architecture (capture/ebpf.py); without it, first sends are plain sends.
 *   SVCT_JOIN       fold per owner (the nearest ancestor-or-self that writes markers):
 *       only writes to the run's marker pipe (`marker_pipe`, OFF_FILE_INODE, OFF_INODE_INO,
 *       OFF_INODE_SB, OFF_SB_DEV) are markers, each owner has its own epoch, and connects
 *       fold as sends do. Without it: one global epoch bumped by any marker-looking write
 *       of the tree, and one record per connect.
 * Only thread groups in `traced` (keyed by host tgid, the kernel's own) are reported. The
 * runner knows the command only by its pid in the runner's namespace, while the command
 * waits in a read() on a gate pipe: the runner puts that pid in `seeds`, and the return of
 * that read, in the command's own context, moves its kernel tgid to `traced`.
 * sched_process_fork extends `traced` to every descendant process.
 */
#include "svctrace.h"
#include "bcc_quick.h"

#if !defined(OFF_SKC_DADDR) || !defined(OFF_SKC_DPORT) || !defined(OFF_SKC_NUM) || \
    !defined(OFF_SKC_V6_DADDR) || !defined(OFF_SK_ERR) || !defined(OFF_UNIX_PEER) || \
    !defined(OFF_UNIX_ADDR) || !defined(OFF_UNIX_ADDR_LEN) || !defined(OFF_UNIX_ADDR_NAME) || \
    !defined(OFF_TASK_FILES) || !defined(OFF_FILES_FDT) || !defined(OFF_FDT_FD) || \
    !defined(OFF_FILE_PRIVATE) || !defined(OFF_SOCKET_TYPE)
#error "kernel struct offsets must be passed as -D defines (computed from BTF)"
#endif
#if defined(SVCT_JOIN) && (!defined(OFF_FILE_INODE) || !defined(OFF_INODE_INO) || \
    !defined(OFF_INODE_SB) || !defined(OFF_SB_DEV))
#error "SVCT_JOIN needs the file/inode/super_block offsets as -D defines (BTF)"
#endif
#if !defined(PIDNS_DEV) || !defined(PIDNS_INO)
#error "the runner's PID namespace must be passed as -DPIDNS_DEV and -DPIDNS_INO"
#endif
#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 256
#endif
#ifndef TRACED_MAX
#define TRACED_MAX 32768
#endif
#ifndef AGGS_MAX
#define AGGS_MAX 16384
#endif
#ifndef LOSSES_MAX
#define LOSSES_MAX 4096
#endif

/* Address families (include/linux/socket.h, ABI). Spelled here instead of including
 * <linux/socket.h> and <uapi/linux/ptrace.h>: parsing those kernel headers was ~0.4 s of
 * the ~1.5 s bcc compile on every run; bcc's own preamble declares the rest. */
#define SVCT_AF_UNSPEC 0
#define SVCT_AF_UNIX 1
#define SVCT_AF_INET 2
#define SVCT_AF_INET6 10
/* include/net/tcp_states.h; stable values, spelled here to not depend on the headers */
#define SVCT_TCP_ESTABLISHED 1
#define SVCT_TCP_SYN_SENT 2
#define SVCT_TCP_CLOSE 7
#define SVCT_TCP_LISTEN 10
#define SVCT_EINPROGRESS 115
#define SVCT_ECONNABORTED 103
#define SVCT_CLONE_THREAD 0x00010000 /* uapi/linux/sched.h */
#define SVCT_MMSGHDR_SIZE 64         /* sizeof(struct mmsghdr) on 64-bit */
#define SVCT_IPPROTO_TCP 6
#define SVCT_IPPROTO_UDP 17
#define SVCT_IPPROTO_UDPLITE 136
#define SVCT_SOCK_STREAM 1
#define SVCT_SOCK_DGRAM 2
#define SVCT_CLONE_VM 0x00000100
#define SVCT_CLONE_VFORK 0x00004000

/* How the current send syscall names its destination, saved at sys_enter_* */
enum how { HOW_NONE = 0, HOW_SENDTO = 2, HOW_SENDMSG = 3, HOW_SENDMMSG = 4 };

struct send_ctx {
	__u64 uarg;    /* sendto: sockaddr *; sendmsg: user_msghdr *; sendmmsg: mmsghdr * */
	__u32 addrlen; /* sendto only */
	__u32 idx;     /* sendmmsg: index of the next message (one sock_send_length each) */
	__u32 how;     /* enum how; HOW_NONE between syscalls */
	__u32 fd;      /* the socket: a query sent to port 53 marks it (mark_dns) */
};

struct pending_connect {
	struct svct_event e;
	__u32 fd;
	__u32 _pad;
	__u64 sk; /* the TCP socket (SYN_SENT): a later failure is found by it */
};

struct agg_key {
	__u64 sk;
	__u32 tgid;
	__u32 _pad;
};

/* Sends on one socket within one marker epoch (see bump_epoch) all lie between the same
 * two phase edges: the first is emitted, the others only counted, and a "tail" record
 * (count, last ts/tid) follows when the epoch moves on. A tight libpq loop then costs
 * user space one record per test phase, not one per round trip. With SVCT_JOIN, connects
 * and the sends of a process's other sockets to the same destination fold the same way
 * per destination (dest_aggs): a storm of short connections costs a record per phase. */
struct agg {
	__u64 epoch;
	__u64 last_ts;
	__u32 count;    /* sends folded into this socket's current record */
	__u32 last_tid;
	char last_comm[SVCT_COMM_LEN];
	struct svct_event first;
	/* dest_aggs of sends: the first send's first bytes (hash; 0: none read), and how
	 * many folded sends were another socket's first with the same bytes */
	__u64 bytes_hash;
	__u32 firsts;
	__u32 to_dest; /* aggs (SVCT_JOIN): this socket's sends fold into its destination's
	                * record in dest_aggs, this epoch */
};

/* A record opened by e in epoch `now`: nothing folded into it yet (fresh: per-CPU scratch,
 * whatever an earlier record left in it) */
static __always_inline void agg_start(struct agg *fresh, const struct svct_event *e, __u64 now)
{
	fresh->epoch = now;
	fresh->count = 0;
	fresh->last_ts = e->ts_ns;
	fresh->last_tid = e->tid;
	fresh->bytes_hash = 0;
	fresh->firsts = 0;
	fresh->to_dest = 0;
	__builtin_memcpy(&fresh->first, e, sizeof(*e));
}

/* Between a clone-family syscall's entry and exit in the creating thread. */
struct clone_info {
	__u64 flags;
	__u64 ts_ns; /* the birth time reported for the new process or thread */
};

/* pid and tid of the current task in the runner's PID namespace */
struct ns_ids {
	__u32 tgid;
	__u32 tid;
};

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
/* traced tgid -> its owner's tgid: the nearest ancestor-or-self that wrote to the marker
 * pipe (0: none yet, or without SVCT_JOIN) */
BPF_HASH(traced, __u32, __u32, TRACED_MAX);
/* Per-thread scratch between a syscall's entry and exit; LRU so a lost exit cannot leak. */
BPF_TABLE("lru_hash", __u32, struct pending_connect, connecting, 4096);
/* One slot per traced thread that used sendto/sendmsg/sendmmsg, rewritten in place at
 * each such syscall (a hash insert+delete per call measured 1.4x CPU on a send loop).
 * Deleted when the thread exits. Plain writes need no slot: a unix peer is read from the
 * socket itself, an inet one from sock_common. */
BPF_TABLE("lru_hash", __u32, struct send_ctx, sending, 16384);
BPF_TABLE("lru_hash", __u32, struct clone_info, cloning, 1024);
/* pids in the runner's namespace waiting to join `traced`, and how many there are (so the
 * read tracepoint costs one array lookup while nothing waits) */
BPF_HASH(seeds, __u32, __u8, 64);
BPF_ARRAY(seeding, __u64, 1);
BPF_PERCPU_ARRAY(counters, __u64, CNT_SLOTS);
/* A non-blocking TCP connect returns -EINPROGRESS; its failure (RST, timeout) comes
 * later, maybe in softirq context where the current task is arbitrary: the attempt is
 * found by its socket. Over loopback the RST can even be processed inside connect()
 * itself, before it returns: that error waits in early_errors for sys_exit_connect. */
BPF_TABLE("lru_hash", __u64, struct svct_event, inflight, 4096);
struct early_error {
	__s32 error;
	__u32 _pad;
	__u64 ts_ns; /* only an error after the connect's own start belongs to it */
};
BPF_TABLE("lru_hash", __u64, struct early_error, early_errors, 1024);
BPF_TABLE("lru_hash", struct agg_key, struct agg, aggs, AGGS_MAX);
BPF_PERCPU_ARRAY(agg_scratch, struct agg, 1);
BPF_PERCPU_ARRAY(send_scratch, struct svct_event, 1);
/* The global marker epoch: bumped by every marker write. With SVCT_JOIN it also numbers
 * the owners' epochs, so no two epochs anywhere share a value. */
BPF_ARRAY(epoch, __u64, 1);
/* (process, marker epoch) -> when and how many of its records the full ring buffer lost
 * (svctrace.h); drained by user space at every poll */
BPF_HASH(losses, struct svct_loss_key, struct svct_loss, LOSSES_MAX);

#ifdef SVCT_JOIN
/* The run's marker pipe as the kernel sees it through a write's fd (f_inode: i_ino and
 * i_sb->s_dev). The runner makes one empty write to it from process `calibrate` (its pid
 * in the runner's namespace), which fills ino and dev: read here the way every marker
 * write is read, so stat()'s view (overlayfs) cannot disagree. Until then (ino 0) any
 * marker-looking write counts, as without SVCT_JOIN. */
struct marker_pipe {
	__u64 ino;
	__u32 dev;
	__u32 calibrate;
};
BPF_ARRAY(marker_pipe, struct marker_pipe, 1);
/* owner tgid -> its current epoch (a value of `epoch` taken at its last marker write).
 * split: a process that had it as owner became an owner itself (an xdist worker of the
 * main pytest process): processes still inheriting it may have been forked by that one
 * before its first marker write, so they fold by the global epoch instead, as
 * before the join; the owner itself keeps its own. */
struct owner_state {
	__u64 epoch;
	__u64 split;
};
BPF_TABLE("lru_hash", __u32, struct owner_state, owner_epochs, 4096);

/* Records folded per destination within an owner epoch, per thread (each thread stays in
 * the evidence): connects with one result, and sends on any socket but the one whose
 * record was emitted */
struct dest_key {
	__u32 tgid;
	__u32 tid;
	__s32 result;    /* connects: 0, -EINPROGRESS (settled ok), or -errno (settled
	                  * failure); 0 for sends */
	__u16 family;
	__u16 dport;
	__u64 a0;
	__u64 a1;
	__u64 path_hash; /* unix paths: the whole path, not only its first 16 bytes */
	__u8 kind;       /* SVCT_CONNECT or SVCT_SEND */
	__u8 proto;
	__u8 addr_len;
	__u8 _pad[5];
};
BPF_TABLE("lru_hash", struct dest_key, struct agg, dest_aggs, AGGS_MAX);
BPF_PERCPU_ARRAY(dest_key_scratch, struct dest_key, 1); /* off the send path's stack */
/* A first send's bytes, read once for both its hash and its record (sent_bytes_hash) */
BPF_PERCPU_ARRAY(bytes_scratch, struct svct_first, 1);
#endif

#ifdef SVCT_STACKS
#define SVCT_SIGSTOP 19
/* (process, destination or creating thread) -> marker epoch + 1 of its last stop */
struct freeze_key {
	__u32 tgid;
	__u16 family; /* 0xFFFF: a thread creation, a0 = the creating thread */
	__u16 dport;
	__u64 a0;
	__u64 a1;
	__u64 path_hash; /* unix paths: the whole path, not only its first 16 bytes */
};
BPF_TABLE("lru_hash", struct freeze_key, __u64, frozen_at, 16384);
#endif

static __always_inline __u32 current_tgid(void)
{
	return bpf_get_current_pid_tgid() >> 32;
}

static __always_inline __u32 current_tid(void)
{
	return (__u32)bpf_get_current_pid_tgid();
}

static __always_inline int is_traced(__u32 tgid)
{
	return traced.lookup(&tgid) != 0;
}

/* The marker epoch that folds the records of process tgid (host tgid): its owner's, or
 * the global one while it has none. */
static __always_inline __u64 epoch_of(__u32 tgid)
{
	__u32 zero = 0;
	__u64 *value;
#ifdef SVCT_JOIN
	__u32 *owner = traced.lookup(&tgid);

	if (owner && *owner) {
		struct owner_state *o = owner_epochs.lookup(owner);

		/* else evicted or exited: the global epoch moves at least as often */
		if (o && (*owner == tgid || !o->split))
			return o->epoch;
	}
#endif
	value = epoch.lookup(&zero);
	return value ? *value : 0;
}

static __always_inline void count_n(__u32 slot, __u64 n)
{
	__u64 *value = counters.lookup(&slot);
	if (value)
		*value += n;
}

static __always_inline void count(__u32 slot)
{
	count_n(slot, 1);
}

/* 0 and the current task's ids in the runner's PID namespace, or -1 when the task lives
 * in another one (bpf_get_ns_current_pid_tgid, Linux 5.7+, checks the task's active
 * namespace against the one given). On the host the namespace is the initial one. */
static __always_inline int ns_ids(struct ns_ids *ids)
{
	struct bpf_pidns_info ns = {};

	if (bpf_get_ns_current_pid_tgid(PIDNS_DEV, PIDNS_INO, &ns, sizeof(ns)))
		return -1;
	ids->tgid = ns.tgid;
	ids->tid = ns.pid;
	return 0;
}

/* The marker epoch (see bump_epoch) the current process's records fold by, and its
 * losses are keyed by (in softirq context: the interrupted task's, a window key only). */
static __always_inline __u64 current_epoch(void)
{
	return epoch_of(current_tgid());
}

/* A record of process `pid` (runner's namespace; 0: the current task's) did not fit in
 * the ring buffer: counted, and its loss window widened so that user space can tell
 * which test phases may miss a record. */
static __always_inline void lost(__u32 pid)
{
	struct svct_loss_key key = {};
	struct svct_loss fresh, *w;
	struct ns_ids ids;
	__u64 now = bpf_ktime_get_ns();

	if (!pid) {
		if (ns_ids(&ids)) { /* another namespace: its record would not be emitted */
			count(CNT_FOREIGN_PIDNS_EVENTS);
			return;
		}
		pid = ids.tgid;
	}
	count(CNT_LOST_EVENTS);
	key.pid = pid;
	key.epoch = current_epoch();
	w = losses.lookup(&key);
	if (!w) {
		fresh.first_ts = now;
		fresh.last_ts = now;
		fresh.n = 1;
		if (!losses.insert(&key, &fresh))
			return;
		w = losses.lookup(&key); /* another CPU inserted it first, or the map is full */
		if (!w)
			return;
	}
	__sync_fetch_and_add(&w->n, 1);
	if (now > w->last_ts)
		w->last_ts = now;
	if (now < w->first_ts)
		w->first_ts = now;
}

/* A zeroed record of process `pid` (as lost() takes it), or 0 when the buffer is full. */
static __always_inline struct svct_event *reserve_of(__u32 pid)
{
	struct svct_event *e = events.ringbuf_reserve(sizeof(struct svct_event));
	if (!e) {
		lost(pid);
		return 0;
	}
	/* ring buffer memory is not zeroed: no stale bytes may reach user space */
	__builtin_memset(e, 0, sizeof(*e));
	return e;
}

static __always_inline struct svct_event *reserve(void)
{
	return reserve_of(0);
}

static __always_inline void submit(struct svct_event *e)
{
	/* no wakeup: user space polls every ~20 ms (measured: a wakeup per event cost 1.5x on
	 * a Postgres round-trip loop, polling 1.03-1.14x) */
	events.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
}

/* Fill the acting task's facts; -1 (counted) when its pids cannot be told: do not emit. */
static __always_inline int fill_task(struct svct_event *e, __u8 kind)
{
	struct ns_ids ids;

	if (ns_ids(&ids)) {
		count(CNT_FOREIGN_PIDNS_EVENTS);
		return -1;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->pid = ids.tgid;
	e->tid = ids.tid;
	e->kind = kind;
	e->count = 1;
	bpf_get_current_comm(&e->comm, sizeof(e->comm));
	return 0;
}

/* A record of `kind` for the current task, reserved and filled, or 0. */
static __always_inline struct svct_event *begin(__u8 kind)
{
	struct svct_event *e = reserve();

	if (e && fill_task(e, kind)) {
		events.ringbuf_discard(e, BPF_RB_NO_WAKEUP);
		return 0;
	}
	return e;
}

/* Decode a user sockaddr of len bytes into e (family, port, address); addr_len stays 0
 * when it is absent or too short. */
static __always_inline void read_sockaddr(struct svct_event *e, const char *uaddr, int len)
{
	__u16 family = 0, port = 0;

	if (!uaddr || len < 2 || bpf_probe_read_user(&family, sizeof(family), uaddr))
		return;
	e->family = family;
	if (family == SVCT_AF_INET && len >= 8) {
		bpf_probe_read_user(&port, 2, uaddr + 2);
		if (!bpf_probe_read_user(e->addr.v4, 4, uaddr + 4))
			e->addr_len = 4;
		e->dport = bpf_ntohs(port);
	} else if (family == SVCT_AF_INET6 && len >= 24) { /* 24: SIN6_LEN_RFC2133, no scope id */
		bpf_probe_read_user(&port, 2, uaddr + 2);
		if (!bpf_probe_read_user(e->addr.v6, 16, uaddr + 8))
			e->addr_len = 16;
		e->dport = bpf_ntohs(port);
	} else if (family == SVCT_AF_UNIX) {
		__u64 n = (__u32)(len - 2); /* sun_path bytes; abstract names are exactly this long */
		if (n > SVCT_PATH_LEN)
			n = SVCT_PATH_LEN;
		/* keep clang from reusing the unclamped register: the verifier needs the bound
		 * on the very register passed as the size */
		asm volatile("" : "+r"(n));
		if (n > SVCT_PATH_LEN)
			return;
		if (!bpf_probe_read_user(e->addr.path, n, uaddr + 2))
			e->addr_len = n;
	}
}

/* FNV-1a of a unix path's bytes after its first 16 (which keys compare as they are), a
 * word at a time: the bytes past addr_len are zero in every record built here, and
 * straight-line code keeps the send program quick to verify. */
static __always_inline __u64 path_rest_hash(const struct svct_event *e)
{
	__u64 hash = 14695981039346656037ULL, word;
	__u32 tail = 0;

	if (e->family != SVCT_AF_UNIX)
		return 0;
#pragma unroll
	for (int i = 16; i + 8 <= SVCT_PATH_LEN; i += 8) {
		__builtin_memcpy(&word, e->addr.path + i, 8);
		hash = (hash ^ word) * 1099511628211ULL;
	}
	__builtin_memcpy(&tail, e->addr.path + SVCT_PATH_LEN - 4, 4); /* 108 = 16 + 11 * 8 + 4 */
	return (hash ^ tail) * 1099511628211ULL;
}

/* ---- --stacks: stop the process at its first contact ------------------------ */
#ifdef SVCT_STACKS
/* Stop the current process (every thread: SIGSTOP is a group stop, taken when this
 * thread returns to user space, so its stack is the one of the contact) and tell user
 * space, which dumps the Python stacks and sends SIGCONT. The record is reserved first:
 * a process is never stopped without a record that makes user space resume it. */
static __always_inline void freeze_now(const struct svct_event *src, struct freeze_key *key)
{
	__u64 mark = current_epoch() + 1;
	__u64 *seen = frozen_at.lookup(key);
	struct svct_event *f;

	if (seen && *seen == mark)
		return; /* stopped for this already since the last marker write */
	f = reserve();
	if (!f)
		return;
	__builtin_memcpy(f, src, sizeof(*f));
	f->result = src->kind; /* what triggered it */
	f->kind = SVCT_FREEZE;
	f->count = (__u32)mark;
	if (bpf_send_signal(SVCT_SIGSTOP)) { /* a kernel thread, an exiting task */
		events.ringbuf_discard(f, BPF_RB_NO_WAKEUP);
		return;
	}
	frozen_at.update(key, &mark);
	submit(f);
}

static __always_inline void freeze_contact(const struct svct_event *e)
{
	struct freeze_key key = {.tgid = e->pid, .family = e->family, .dport = e->dport};

	__builtin_memcpy(&key.a0, e->addr.path, 8);
	__builtin_memcpy(&key.a1, e->addr.path + 8, 8);
	key.path_hash = path_rest_hash(e);
	freeze_now(e, &key);
}

static __always_inline void freeze_thread(const struct svct_event *e)
{
	struct freeze_key key = {.tgid = e->pid, .family = 0xFFFF, .a0 = e->ppid};

	freeze_now(e, &key);
}
#else
#define freeze_contact(e) do { } while (0)
#define freeze_thread(e) do { } while (0)
#endif

/* ---- names: DNS replies to the tree's own queries ------------------------------------ */

#define SVCT_DNS_PORT 53
/* How a receive names its buffer, saved at its entry */
enum dns_how { DNS_BUF = 1, DNS_MSGHDR = 2 };

struct dns_key {
	__u32 tgid;
	__u32 fd;
};

/* The server a socket of the tree connected or sent to at port 53 */
struct dns_peer {
	__u16 dport;
	__u8 family;
	__u8 proto;
	__u8 addr_len;
	__u8 _pad[3];
	__u8 addr[16];
};

struct dns_recv {
	__u64 uarg; /* DNS_BUF: the buffer; DNS_MSGHDR: the user_msghdr */
	__u32 fd;
	__u32 how;
};

/* (traced tgid, fd) of sockets that queried port 53. LRU: a closed fd is not tracked, so
 * a reused fd may have its receives copied too; user space parses strictly and drops what
 * is not a DNS reply. */
BPF_TABLE("lru_hash", struct dns_key, struct dns_peer, dns_fds, 1024);
BPF_TABLE("lru_hash", __u32, struct dns_recv, dns_receiving, 1024);
/* 0 until the tree first uses port 53: until then a receive costs one array lookup */
BPF_ARRAY(dns_armed, __u64, 1);

static __always_inline int dns_is_armed(void)
{
	__u32 zero = 0;
	__u64 *armed = dns_armed.lookup(&zero);

	return armed && *armed;
}

/* Socket fd of the current (traced) process sent or connected to e's port-53 server. */
static __always_inline void mark_dns(__u32 fd, const struct svct_event *e)
{
	struct dns_key key = {.tgid = current_tgid(), .fd = fd};
	struct dns_peer peer = {};
	__u32 zero = 0;
	__u64 *armed;

	if (e->dport != SVCT_DNS_PORT || (e->family != SVCT_AF_INET && e->family != SVCT_AF_INET6))
		return;
	peer.dport = e->dport;
	peer.family = e->family;
	peer.proto = e->proto;
	peer.addr_len = e->addr_len;
	__builtin_memcpy(peer.addr, e->addr.v6, 16);
	dns_fds.update(&key, &peer);
	armed = dns_armed.lookup(&zero);
	if (armed && !*armed)
		*armed = 1;
}

static __always_inline int dns_recv_begins(__u32 fd, const void *uarg, __u32 how)
{
	struct dns_key key;
	struct dns_recv r = {.uarg = (__u64)uarg, .fd = fd, .how = how};
	__u32 tid;

	if (!dns_is_armed())
		return 0;
	key.tgid = current_tgid(); /* only traced processes ever enter dns_fds */
	key.fd = fd;
	if (!dns_fds.lookup(&key))
		return 0;
	tid = current_tid();
	dns_receiving.update(&tid, &r);
	return 0;
}

static __always_inline int dns_recv_ends(long ret)
{
	__u32 tid = current_tid();
	struct dns_recv *pending, r;
	struct dns_peer *peer;
	struct dns_key key;
	struct svct_dns *d;
	const char *buf;
	__u64 n;

	if (!dns_is_armed())
		return 0;
	pending = dns_receiving.lookup(&tid);
	if (!pending)
		return 0;
	r = *pending;
	dns_receiving.delete(&tid);
	if (ret <= 0)
		return 0;
	key.tgid = current_tgid();
	key.fd = r.fd;
	peer = dns_fds.lookup(&key);
	if (!peer)
		return 0;
	buf = (const char *)r.uarg;
	if (r.how == DNS_MSGHDR) {
		const char *iov = 0;
		/* struct user_msghdr: msg_iov at 16; struct iovec: iov_base at 0 (uapi) */
		bpf_probe_read_user(&iov, sizeof(iov), buf + 16);
		buf = 0;
		if (iov)
			bpf_probe_read_user(&buf, sizeof(buf), iov);
		if (!buf)
			return 0;
	}
	d = events.ringbuf_reserve(sizeof(struct svct_dns));
	if (!d) {
		lost(0);
		return 0;
	}
	__builtin_memset(d, 0, sizeof(*d)); /* ring buffer memory is not zeroed */
	if (fill_task(&d->head, SVCT_DNS_REPLY)) {
		events.ringbuf_discard(d, BPF_RB_NO_WAKEUP);
		return 0;
	}
	d->head.result = ret;
	d->head.family = peer->family;
	d->head.proto = peer->proto;
	d->head.dport = peer->dport;
	d->head.addr_len = peer->addr_len;
	__builtin_memcpy(d->head.addr.v6, peer->addr, 16);
	d->stream = peer->proto == SVCT_P_TCP;
	n = (__u64)ret;
	if (n > SVCT_DNS_MAX)
		n = SVCT_DNS_MAX;
	asm volatile("" : "+r"(n)); /* the verifier needs the bound on this very register */
	if (n > SVCT_DNS_MAX)
		n = 0;
	if (n && !bpf_probe_read_user(d->data, n, buf))
		d->len = n;
	events.ringbuf_submit(d, BPF_RB_NO_WAKEUP);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_recvfrom)
{
	return dns_recv_begins(args->fd, args->ubuf, DNS_BUF);
}
TRACEPOINT_PROBE(syscalls, sys_exit_recvfrom) { return dns_recv_ends(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_recvmsg)
{
	return dns_recv_begins(args->fd, args->msg, DNS_MSGHDR);
}
TRACEPOINT_PROBE(syscalls, sys_exit_recvmsg) { return dns_recv_ends(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_read)
{
	return dns_recv_begins(args->fd, args->buf, DNS_BUF);
}
/* A closed resolver socket's fd is soon reused by the connection it resolved for: its
 * receives must not be copied. */
TRACEPOINT_PROBE(syscalls, sys_enter_close)
{
	struct dns_key key;

	if (!dns_is_armed())
		return 0;
	key.tgid = current_tgid();
	key.fd = args->fd;
	dns_fds.delete(&key);
	return 0;
}

/* ---- process tree ---------------------------------------------------------------- */

/* Children and threads are announced from the creating thread when its clone-family call
 * returns: the return value is the new pid/tid in the creator's namespace, the runner's,
 * which sched_process_fork (host pids only) cannot tell. The birth time is the call's
 * start. A vfork parent returns after the child's exec: the records' order differs, their
 * times do not. */
static __always_inline int clone_begins(__u64 flags)
{
	__u32 tid = current_tid();
	struct clone_info info = {.flags = flags, .ts_ns = bpf_ktime_get_ns()};

	if (is_traced(current_tgid()))
		cloning.update(&tid, &info);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_clone)
{
	return clone_begins(args->clone_flags);
}

TRACEPOINT_PROBE(syscalls, sys_enter_clone3)
{
	__u64 flags = 0; /* struct clone_args starts with __aligned_u64 flags */

	if (!is_traced(current_tgid()))
		return 0;
	bpf_probe_read_user(&flags, sizeof(flags), (void *)args->uargs);
	return clone_begins(flags);
}

TRACEPOINT_PROBE(syscalls, sys_enter_fork) { return clone_begins(0); }
TRACEPOINT_PROBE(syscalls, sys_enter_vfork)
{
	return clone_begins(SVCT_CLONE_VM | SVCT_CLONE_VFORK);
}

static __always_inline int clone_returns(long ret)
{
	__u32 tid = current_tid();
	struct clone_info *info = cloning.lookup(&tid); /* none in the new child itself */
	struct svct_event *e;

	if (!info)
		return 0;
	if (ret > 0) {
		int thread = info->flags & SVCT_CLONE_THREAD;
		e = begin(thread ? SVCT_THREAD : SVCT_FORK);
		if (e) {
			e->ts_ns = info->ts_ns;
			if (thread) {
				e->ppid = e->tid; /* the creating thread */
				e->tid = ret;
			} else {
				e->ppid = e->pid;
				e->pid = ret;
				e->tid = ret;
			}
			if (thread)
				freeze_thread(e);
			submit(e);
		}
	}
	cloning.delete(&tid);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_clone) { return clone_returns(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_clone3) { return clone_returns(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_fork) { return clone_returns(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_vfork) { return clone_returns(args->ret); }

TRACEPOINT_PROBE(sched, sched_process_fork)
{
	__u32 parent = current_tgid(), tid = current_tid(), child = args->child_pid;
	__u32 *owner = traced.lookup(&parent), inherited;
	struct clone_info *info;

	if (!owner)
		return 0;
	inherited = *owner; /* a child's markers are its parent's until it writes its own */
	/* runs in the parent; a new thread joins an already traced thread group */
	info = cloning.lookup(&tid);
	if (info && (info->flags & SVCT_CLONE_THREAD))
		return 0;
	if (traced.update(&child, &inherited))
		count(CNT_UNTRACED_CHILDREN);
	return 0;
}

/* The command itself, released from its gate read: from `seeds` (runner-namespace pid)
 * to `traced` (kernel tgid). */
TRACEPOINT_PROBE(syscalls, sys_exit_read)
{
	__u32 zero = 0, tgid;
	__u64 *waiting = seeding.lookup(&zero);
	struct ns_ids ids;
	__u32 none = 0;

	dns_recv_ends(args->ret); /* a DNS reply over TCP, or read() on a UDP socket (Go) */
	if (!waiting || !*waiting)
		return 0;
	tgid = current_tgid();
	if (is_traced(tgid) || ns_ids(&ids) || !seeds.lookup(&ids.tgid))
		return 0;
	seeds.delete(&ids.tgid);
	traced.update(&tgid, &none);
	__sync_fetch_and_add(waiting, -1);
	return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
	__u32 tgid = current_tgid();
	unsigned short loc = args->data_loc_filename & 0xFFFF;
	struct svct_event *e;
	long n;

	if (!is_traced(tgid))
		return 0;
	e = begin(SVCT_EXEC); /* comm is already the new program's name here */
	if (!e)
		return 0;
	n = bpf_probe_read_kernel_str(e->addr.path, sizeof(e->addr.path), (char *)args + loc);
	e->addr_len = n > 0 ? n - 1 : 0;
	submit(e);
	return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
	__u32 tgid = current_tgid(), tid = current_tid();
	struct svct_event *e;

	if (!is_traced(tgid))
		return 0;
	sending.delete(&tid); /* per-thread slots die with their thread */
#ifdef HAS_GROUP_DEAD
	if (!args->group_dead) /* the last thread of the group is leaving */
		return 0;
#else
	if (tid != tgid)
		return 0;
#endif
	traced.delete(&tgid);
#ifdef SVCT_JOIN
	owner_epochs.delete(&tgid); /* its descendants fall back to the global epoch */
#endif
	e = begin(SVCT_EXIT);
	if (!e)
		return 0;
	e->tid = e->pid;
	submit(e);
	return 0;
}

/* ---- connect ----------------------------------------------------------------------- */

/* The current task's struct file of `fd`, read through its fd table
 * (task->files->fdt->fd[fd]; offsets from BTF), or 0. */
static __always_inline const char *fd_file(__u32 fd)
{
	const char *task = (const char *)bpf_get_current_task();
	const char *files = 0, *fdt = 0, *fds = 0, *file = 0;

	bpf_probe_read_kernel(&files, sizeof(files), task + OFF_TASK_FILES);
	if (files)
		bpf_probe_read_kernel(&fdt, sizeof(fdt), files + OFF_FILES_FDT);
	if (fdt)
		bpf_probe_read_kernel(&fds, sizeof(fds), fdt + OFF_FDT_FD);
	if (fds)
		bpf_probe_read_kernel(&file, sizeof(file), fds + (__u64)(fd & 0xFFFFF) * 8);
	return file;
}

/* The transport of the current task's socket `fd` (its file's private_data is the
 * struct socket). */
static __always_inline __u8 socket_proto(__u32 fd)
{
	const char *file = fd_file(fd), *sock = 0;
	short type = 0;

	if (file)
		bpf_probe_read_kernel(&sock, sizeof(sock), file + OFF_FILE_PRIVATE);
	if (sock)
		bpf_probe_read_kernel(&type, sizeof(type), sock + OFF_SOCKET_TYPE);
	if (type == SVCT_SOCK_STREAM)
		return SVCT_P_TCP;
	if (type == SVCT_SOCK_DGRAM)
		return SVCT_P_UDP;
	return type ? SVCT_P_OTHER : SVCT_P_UNKNOWN;
}

TRACEPOINT_PROBE(syscalls, sys_enter_connect)
{
	__u32 tid = current_tid();
	struct pending_connect p = {};

	if (!is_traced(current_tgid()) || fill_task(&p.e, SVCT_CONNECT))
		return 0; /* stamped at entry: when the attempt began */
	p.fd = args->fd;
	read_sockaddr(&p.e, (const char *)args->uservaddr, args->addrlen);
	if (p.e.family == SVCT_AF_UNIX)
		p.e.proto = SVCT_P_UNIX;
	connecting.update(&tid, &p);
	return 0;
}

#ifdef SVCT_JOIN
static __always_inline void emit_tail(struct agg *a, __u32 tailed);
#ifdef SVCT_FIRST_BYTES
static __always_inline __u64 sent_bytes_hash(const struct svct_event *e);
#else
#define sent_bytes_hash(e) 0
#endif

/* 1: e (a connect whose result is already settled: 0, -errno, or -EINPROGRESS that
 * succeeded; or a send) was folded into its destination's record: do not emit it. 0:
 * emit it; it starts that record for epoch `now`, and a tail (count, last ts/tid, result
 * = `result`) will follow if more come. `first`: e is its socket's first send; it folds
 * only if its first bytes are the record's (user space then counts the connection with
 * those bytes: the tail's ppid), else it is emitted with them. */
static __always_inline int fold_dest(const struct svct_event *e, __s32 result, __u64 now,
				     int first)
{
	int connect = e->kind == SVCT_CONNECT;
	__u64 hash = first ? sent_bytes_hash(e) : 0;
	struct agg *a, *fresh;
	struct dest_key *key;
	__u32 zero = 0;

	key = dest_key_scratch.lookup(&zero);
	if (!key)
		return 0;
	__builtin_memset(key, 0, sizeof(*key));
	key->tgid = e->pid;
	key->tid = e->tid;
	key->result = connect ? result : 0;
	key->family = e->family;
	key->dport = e->dport;
	key->kind = e->kind;
	key->proto = e->proto;
	key->addr_len = e->addr_len;
	__builtin_memcpy(&key->a0, e->addr.path, 8);
	__builtin_memcpy(&key->a1, e->addr.path + 8, 8);
	key->path_hash = path_rest_hash(e);
	a = dest_aggs.lookup(key);
	if (a && a->epoch == now) {
		if (first && hash != a->bytes_hash)
			return 0; /* other bytes (another Host): emitted; the record stays */
		if (first && hash) /* unread bytes (hash 0) name no connection */
			__sync_fetch_and_add(&a->firsts, 1);
		__sync_fetch_and_add(&a->count, 1);
		count(connect ? CNT_FOLDED_CONNECTS : CNT_FOLDED_SENDS);
		a->last_ts = e->ts_ns;
		a->last_tid = e->tid;
		__builtin_memcpy(a->last_comm, e->comm, sizeof(a->last_comm));
		return 1;
	}
	if (a && a->count)
		emit_tail(a, connect ? CNT_TAILED_CONNECTS : CNT_TAILED_SENDS);
	fresh = agg_scratch.lookup(&zero);
	if (!fresh)
		return 0;
	agg_start(fresh, e, now);
	fresh->first.result = result; /* a connect tail has no CONNECT_RESULT to settle it */
	fresh->bytes_hash = hash;
	dest_aggs.update(key, fresh);
	return 0;
}

static __always_inline int fold_connect(const struct svct_event *e, __s32 settled)
{
	return fold_dest(e, settled, epoch_of(current_tgid()), 0);
}

/* Fold the returning connect p if its outcome is known now: 1 when folded. A
 * non-blocking TCP connect still in flight is not: its failure may come later. */
static __always_inline int fold_returned(struct pending_connect *p, int ret)
{
	__s32 settled = ret;

	if (ret == -SVCT_EINPROGRESS) {
		__u64 key = p->sk;
		struct early_error *early = p->sk ? early_errors.lookup(&key) : 0;

		if (p->e.proto != SVCT_P_TCP || !early || early->ts_ns < p->e.ts_ns)
			return 0;
		if (early->error)
			settled = early->error;
		if (!fold_connect(&p->e, settled))
			return 0;
		early_errors.delete(&key);
		return 1;
	}
	return fold_connect(&p->e, settled);
}
#endif

TRACEPOINT_PROBE(syscalls, sys_exit_connect)
{
	__u32 tid = current_tid();
	int ret = args->ret;
	struct pending_connect *p = connecting.lookup(&tid);
	struct svct_event *e;

	if (!p)
		return 0;
	if (p->e.family == SVCT_AF_UNSPEC) /* dissolves a UDP association: not a contact */
		goto out;
	/* inet_sock_set_state marks TCP (SYN_SENT) during the call; otherwise (a datagram
	 * socket, or a TCP connect that failed before its handshake: ENETUNREACH) the socket's
	 * own type tells */
	if ((p->e.family == SVCT_AF_INET || p->e.family == SVCT_AF_INET6) && !p->e.proto)
		p->e.proto = socket_proto(p->fd);
	if (ret == 0 || ret == -SVCT_EINPROGRESS)
		mark_dns(p->fd, &p->e); /* glibc and Go connect their resolver sockets */
#ifdef SVCT_JOIN
	if (fold_returned(p, ret))
		goto out;
#endif
	e = reserve();
	if (e) {
		__builtin_memcpy(e, &p->e, sizeof(*e));
		e->result = ret;
		submit(e);
		freeze_contact(&p->e);
	}
	if (ret == -SVCT_EINPROGRESS && p->e.proto == SVCT_P_TCP && p->sk) {
		__u64 key = p->sk;
		struct early_error *early = early_errors.lookup(&key);
		if (early && early->ts_ns >= p->e.ts_ns) {
			e = early->error ? reserve() : 0; /* 0: it succeeded, nothing to add */
			if (e) {
				__builtin_memcpy(e, &p->e, sizeof(*e));
				e->kind = SVCT_CONNECT_RESULT;
				e->result = early->error;
				submit(e);
			}
			early_errors.delete(&key);
		} else {
			p->e.result = ret;
			inflight.update(&key, &p->e);
		}
	}
out:
	connecting.delete(&tid);
	return 0;
}

/* ---- TCP state: connect transport and late failures, listeners --------------------- */

/* The attempt settled (error, or 0: established) before the traced connect() returned
 * -EINPROGRESS: over loopback or a veth the handshake or the RST is processed in its own
 * softirq or in ksoftirqd (so the current task tells nothing). sys_exit_connect takes it
 * only if it is newer than the attempt. */
static __always_inline void remember_early(__u64 key, __s32 error)
{
	struct early_error early = {.error = error, .ts_ns = bpf_ktime_get_ns()};

	early_errors.update(&key, &early);
}

/* A SYN_SENT socket that closes failed to connect: refused (RST) or timed out. sk_err
 * is set before the state change (tcp_done_with_error), read at its BTF offset. */
static __always_inline void connect_failed(const void *sk)
{
	__u64 key = (__u64)sk;
	struct svct_event *pending = inflight.lookup(&key), *e;
	int error = 0;

	bpf_probe_read_kernel(&error, sizeof(error), (const char *)sk + OFF_SK_ERR);
	error = error > 0 ? -error : -SVCT_ECONNABORTED;
	if (!pending) {
		remember_early(key, error);
		return;
	}
	e = reserve_of(pending->pid); /* the current task may be any (softirq) */
	if (e) {
		__builtin_memcpy(e, pending, sizeof(*e));
		e->kind = SVCT_CONNECT_RESULT;
		e->result = error;
		submit(e);
	}
	inflight.delete(&key);
}

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
	__u32 tid = current_tid();
	int state = args->newstate;
	struct pending_connect *p;
	struct svct_event *e;

	if (args->protocol != SVCT_IPPROTO_TCP)
		return 0;
	if (args->oldstate == SVCT_TCP_SYN_SENT) { /* the attempt is settled either way */
		__u64 key = (__u64)args->skaddr;
		if (state == SVCT_TCP_CLOSE)
			connect_failed(args->skaddr);
		else if (!inflight.lookup(&key))
			remember_early(key, 0); /* established before connect() returned */
		else
			inflight.delete(&key);
		return 0;
	}
	if (state != SVCT_TCP_SYN_SENT && state != SVCT_TCP_LISTEN)
		return 0;
	if (!is_traced(current_tgid())) /* both states are entered in process context */
		return 0;
	if (state == SVCT_TCP_SYN_SENT) {
		p = connecting.lookup(&tid);
		if (p) {
			__u64 key = (__u64)args->skaddr;
			p->e.proto = SVCT_P_TCP;
			p->sk = key;
			/* a socket address is reused after free: drop what an earlier one left */
			inflight.delete(&key);
			early_errors.delete(&key);
		}
		return 0;
	}
	e = begin(SVCT_LISTEN);
	if (!e)
		return 0;
	e->family = args->family;
	e->proto = SVCT_P_TCP;
	e->lport = args->sport; /* the tracepoint stores it in host order */
	if (args->family == SVCT_AF_INET6) {
		bpf_probe_read_kernel(e->addr.v6, 16, args->saddr_v6);
		e->addr_len = 16;
	} else {
		bpf_probe_read_kernel(e->addr.v4, 4, args->saddr);
		e->addr_len = 4;
	}
	submit(e);
	return 0;
}

/* ---- sends --------------------------------------------------------------------------- */

/* Remember how the current syscall names its destination; the caller checked `traced`. */
static __always_inline int store_send(const void *uarg, __u32 addrlen, __u32 how, __u32 fd)
{
	__u32 tid = current_tid();
	struct send_ctx sc = {.uarg = (__u64)uarg, .addrlen = addrlen, .how = how, .fd = fd};
	struct send_ctx *slot;

	slot = sending.lookup(&tid);
	if (slot)
		*slot = sc; /* only this thread writes its slot */
	else
		sending.update(&tid, &sc);
	return 0;
}

static __always_inline int save_send(const void *uarg, __u32 addrlen, __u32 how, __u32 fd)
{
	if (!is_traced(current_tgid()))
		return 0;
	return store_send(uarg, addrlen, how, fd);
}

static __always_inline int forget_send(void)
{
	__u32 tid = current_tid();
	struct send_ctx *slot = sending.lookup(&tid); /* only traced threads have one */

	if (slot)
		slot->how = HOW_NONE;
	return 0;
}

#ifdef SVCT_JOIN
/* Identity (i_ino, i_sb->s_dev) of the current task's file `fd`; left as is when
 * unreadable. */
static __always_inline void file_identity(__u32 fd, __u64 *ino, __u32 *dev)
{
	const char *file = fd_file(fd), *inode = 0, *sb = 0;

	if (file)
		bpf_probe_read_kernel(&inode, sizeof(inode), file + OFF_FILE_INODE);
	if (!inode)
		return;
	bpf_probe_read_kernel(ino, sizeof(*ino), inode + OFF_INODE_INO);
	bpf_probe_read_kernel(&sb, sizeof(sb), inode + OFF_INODE_SB);
	if (sb)
		bpf_probe_read_kernel(dev, sizeof(*dev), sb + OFF_SB_DEV);
}

/* An empty write by the runner (untraced): if it is the one marker_pipe waits for, its
 * fd is the marker pipe. */
static __always_inline void calibrate(__u32 fd)
{
	struct marker_pipe *mp;
	struct ns_ids ids;
	__u32 zero = 0;

	mp = marker_pipe.lookup(&zero);
	if (!mp || !mp->calibrate || ns_ids(&ids) || ids.tgid != mp->calibrate)
		return;
	file_identity(fd, &mp->ino, &mp->dev);
	mp->calibrate = 0;
}

/* Whether fd (of the current task) is the marker pipe; 1 while it is not known yet. */
static __always_inline int is_marker_pipe(__u32 fd)
{
	struct marker_pipe *mp;
	__u32 zero = 0, dev = 0;
	__u64 ino = 0;

	mp = marker_pipe.lookup(&zero);
	if (!mp || !mp->ino)
		return 1;
	file_identity(fd, &ino, &dev);
	return ino == mp->ino && dev == mp->dev;
}
#endif

/* Every line the pytest plugin writes to the marker pipe starts with RS "[" (0x1e 0x5b,
 * wire.py): such a write is a phase or fixture edge, so sends after it start a new record.
 * Without SVCT_JOIN a user write that happens to start the same way counts too (an extra
 * record, never a lost one); with it, the head bytes are checked first (cheap) and only
 * then whether fd is the marker pipe, and the writer becomes its own owner. */
static __always_inline void bump_epoch(__u32 tgid, __u32 *owner, __u32 fd, const char *buf,
				       __u64 len)
{
	char head[2] = {};
	__u32 zero = 0;
	__u64 *value;

	if (len < 2 || bpf_probe_read_user(head, sizeof(head), buf))
		return;
	if (head[0] != 0x1e || head[1] != '[')
		return;
#ifdef SVCT_JOIN
	if (!is_marker_pipe(fd))
		return;
#endif
	value = epoch.lookup(&zero);
	if (!value)
		return;
#ifdef SVCT_JOIN
	{
		/* a fresh value of the global count: no two owners ever share an epoch */
		struct owner_state fresh = {.epoch = __sync_fetch_and_add(value, 1) + 1};
		struct owner_state *mine = owner_epochs.lookup(&tgid), *old;
		__u32 before = *owner;

		if (mine)
			mine->epoch = fresh.epoch;
		else
			owner_epochs.update(&tgid, &fresh);
		if (before != tgid) {
			old = before ? owner_epochs.lookup(&before) : 0;
			if (old)
				old->split = 1;
			*owner = tgid;
		}
	}
#else
	__sync_fetch_and_add(value, 1);
#endif
}

TRACEPOINT_PROBE(syscalls, sys_enter_write)
{
	__u32 tgid = current_tgid();
	__u32 *owner = traced.lookup(&tgid);

	if (owner)
		bump_epoch(tgid, owner, args->fd, (const char *)args->buf, args->count);
#ifdef SVCT_JOIN
	else if (!args->count) /* rare: costs other writes nothing */
		calibrate(args->fd);
#endif
	return 0;
}
TRACEPOINT_PROBE(syscalls, sys_enter_sendto)
{
	return save_send(args->addr, args->addr_len, HOW_SENDTO, args->fd);
}
TRACEPOINT_PROBE(syscalls, sys_exit_sendto) { return forget_send(); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendmsg)
{
	return save_send(args->msg, 0, HOW_SENDMSG, args->fd);
}
TRACEPOINT_PROBE(syscalls, sys_exit_sendmsg) { return forget_send(); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendmmsg)
{
	return save_send(args->mmsg, 0, HOW_SENDMMSG, args->fd);
}
TRACEPOINT_PROBE(syscalls, sys_exit_sendmmsg) { return forget_send(); }

/* The destination named by the send syscall itself (sendto addr, msg_name), if any. */
static __always_inline void syscall_dest(struct svct_event *e, struct send_ctx *sc)
{
	const char *msg = (const char *)sc->uarg;
	const char *name = 0;
	int namelen = 0;

	if (sc->how == HOW_SENDTO) {
		read_sockaddr(e, msg, sc->addrlen);
		return;
	}
	if (sc->how == HOW_SENDMMSG) /* one sock_send_length per message, in order */
		msg += (sc->idx++ & 0xFFFF) * SVCT_MMSGHDR_SIZE;
	else if (sc->how != HOW_SENDMSG)
		return;
	/* struct user_msghdr: void *msg_name at 0, int msg_namelen at 8 (uapi) */
	bpf_probe_read_user(&name, sizeof(name), msg);
	bpf_probe_read_user(&namelen, sizeof(namelen), msg + 8);
	read_sockaddr(e, name, namelen);
}

static __always_inline void inet_dest(struct svct_event *e, const char *sk)
{
	__u16 dport = 0, num = 0;
	__u64 v6[2] = {};
	__u32 v4 = 0;

	bpf_probe_read_kernel(&dport, 2, sk + OFF_SKC_DPORT);
	bpf_probe_read_kernel(&num, 2, sk + OFF_SKC_NUM);
	e->lport = num; /* skc_num is host order */
	if (e->family == SVCT_AF_INET) {
		bpf_probe_read_kernel(&v4, 4, sk + OFF_SKC_DADDR);
		if (v4) {
			__builtin_memcpy(e->addr.v4, &v4, 4);
			e->addr_len = 4;
		}
	} else {
		bpf_probe_read_kernel(v6, 16, sk + OFF_SKC_V6_DADDR);
		if (v6[0] || v6[1]) {
			__builtin_memcpy(e->addr.v6, v6, 16);
			e->addr_len = 16;
		}
	}
	if (e->addr_len)
		e->dport = bpf_ntohs(dport);
}

/* A connected unix socket's peer is the socket it connected to; that socket's bound
 * address is the path a client named (unix_sock->peer->addr, offsets from BTF). Read from
 * the socket itself, it holds after dup2, fork, exec and SCM_RIGHTS alike; an unbound peer
 * (socketpair, a server's accepted socket) has no address and stays unknown. */
static __always_inline void unix_dest(struct svct_event *e, const char *sk)
{
	const char *peer = 0, *addr = 0;
	int len = 0;
	__u64 n;

	bpf_probe_read_kernel(&peer, sizeof(peer), sk + OFF_UNIX_PEER);
	if (!peer)
		return;
	bpf_probe_read_kernel(&addr, sizeof(addr), peer + OFF_UNIX_ADDR);
	if (!addr)
		return;
	bpf_probe_read_kernel(&len, sizeof(len), addr + OFF_UNIX_ADDR_LEN);
	if (len <= 2) /* sun_family only: an autobind-less unnamed socket */
		return;
	n = (__u32)(len - 2);
	if (n > SVCT_PATH_LEN)
		n = SVCT_PATH_LEN;
	asm volatile("" : "+r"(n)); /* the verifier needs the bound on this very register */
	if (n > SVCT_PATH_LEN)
		return;
	/* struct unix_address ends in struct sockaddr_un name: sun_path after sun_family */
	if (!bpf_probe_read_kernel(e->addr.path, n, addr + OFF_UNIX_ADDR_NAME + 2))
		e->addr_len = n;
}

static __always_inline __u8 proto_of(__u16 family, __u16 protocol)
{
	if (family == SVCT_AF_UNIX)
		return SVCT_P_UNIX;
	if (protocol == SVCT_IPPROTO_TCP)
		return SVCT_P_TCP;
	if (protocol == SVCT_IPPROTO_UDP || protocol == SVCT_IPPROTO_UDPLITE)
		return SVCT_P_UDP;
	return SVCT_P_OTHER;
}

static __always_inline int same_dest(const struct svct_event *a, const struct svct_event *b)
{
	__u64 a0 = 0, a1 = 0, b0 = 0, b1 = 0;

	__builtin_memcpy(&a0, a->addr.path, 8);
	__builtin_memcpy(&a1, a->addr.path + 8, 8);
	__builtin_memcpy(&b0, b->addr.path, 8);
	__builtin_memcpy(&b1, b->addr.path + 8, 8);
	return a->family == b->family && a->dport == b->dport && a->addr_len == b->addr_len &&
	       a0 == b0 && a1 == b1;
}

static __always_inline void emit_tail(struct agg *a, __u32 tailed)
{
	struct svct_event *t = reserve();

	if (!t)
		return;
	__builtin_memcpy(t, &a->first, sizeof(*t));
	t->ts_ns = a->last_ts;
	t->tid = a->last_tid;
	__builtin_memcpy(t->comm, a->last_comm, sizeof(t->comm));
	t->count = a->count;
	if (t->kind == SVCT_SEND)
		t->ppid = a->firsts; /* SVCT_JOIN; 0 otherwise */
	count_n(tailed, a->count);
	submit(t);
}

/* 1: e was folded into its socket's record (discard it); 0: emit e. *first: e is the
 * process's first send on this socket (to this destination, for a datagram socket). */
static __always_inline int fold_send(struct svct_event *e, __u64 sk, int *first)
{
	struct agg_key key = {.sk = sk, .tgid = e->pid};
	__u32 zero = 0;
	__u64 now = epoch_of(current_tgid());
	struct agg *a = aggs.lookup(&key), *fresh;

	if (a && a->epoch == now && same_dest(&a->first, e) && !a->to_dest) {
		__sync_fetch_and_add(&a->count, 1);
		count(CNT_FOLDED_SENDS);
		a->last_ts = e->ts_ns;
		a->last_tid = e->tid;
		__builtin_memcpy(a->last_comm, e->comm, sizeof(a->last_comm));
		return 1;
	}
	*first = !a || !same_dest(&a->first, e);
	if (a && a->count)
		emit_tail(a, CNT_TAILED_SENDS);
#ifdef SVCT_JOIN
	/* another socket's record to this destination is open in this epoch (a new
	 * connection per request): count the send there, and this socket's next ones too
	 * (its entry remembers it has sent: they are not first sends) */
	if (fold_dest(e, e->result, now, *first)) {
		if (a && a->to_dest && a->epoch == now && !*first)
			return 1;
		fresh = agg_scratch.lookup(&zero);
		if (!fresh)
			return 1;
		agg_start(fresh, e, now); /* its tail (if any) is out: no second one */
		fresh->to_dest = 1;
		aggs.update(&key, fresh);
		return 1;
	}
#endif
	fresh = agg_scratch.lookup(&zero);
	if (!fresh)
		return 0;
	agg_start(fresh, e, now);
	aggs.update(&key, fresh);
	return 0;
}

#ifdef SVCT_FIRST_BYTES
/* The first bytes the current send syscall passed, into f. sock:sock_send_length gives
 * the socket but not the buffer, and saving the buffer at every sys_enter_write/sendto
 * would cost every send: the syscall's arguments are read instead from the user
 * registers the kernel saved at syscall entry (bpf_task_pt_regs, Linux 5.15), only here,
 * for a first send. Anything unreadable leaves data_len 0. */
static __always_inline void first_bytes(struct svct_first *f, __s32 sent)
{
	const char *regs = (const char *)bpf_task_pt_regs(bpf_get_current_task_btf());
	__u64 nr = 0, arg2 = 0, arg3 = 0, n = 0;
	const char *buf = 0, *iov = 0;

	if (sent <= 0 || !regs)
		return;
	bpf_probe_read_kernel(&nr, sizeof(nr), regs + OFF_REGS_NR);
	bpf_probe_read_kernel(&arg2, sizeof(arg2), regs + OFF_REGS_ARG2);
	bpf_probe_read_kernel(&arg3, sizeof(arg3), regs + OFF_REGS_ARG3);
	if (nr == SVCT_NR_WRITE || nr == SVCT_NR_SENDTO) {
		buf = (const char *)arg2;
		n = arg3;
	} else if (nr == SVCT_NR_SENDMSG || nr == SVCT_NR_SENDMMSG || nr == SVCT_NR_WRITEV) {
		iov = (const char *)arg2; /* writev: the iovec array itself */
		if (nr != SVCT_NR_WRITEV) /* struct user_msghdr: msg_iov at 16 (uapi); an
		                           * mmsghdr starts with one: its first message */
			bpf_probe_read_user(&iov, sizeof(iov), (const char *)arg2 + 16);
		if (iov) {
			bpf_probe_read_user(&buf, sizeof(buf), iov);   /* iov_base */
			bpf_probe_read_user(&n, sizeof(n), iov + 8);   /* iov_len */
		}
	}
	if (!buf)
		return;
	if (n > (__u64)sent)
		n = sent;
	if (n > SVCT_DATA_LEN)
		n = SVCT_DATA_LEN;
	asm volatile("" : "+r"(n)); /* the verifier needs the bound on this very register */
	if (n > SVCT_DATA_LEN)
		return;
	if (!bpf_probe_read_user(f->data, n, buf))
		f->data_len = n;
}

/* Emit e as a first send, with its bytes; 0 when the ring buffer is full (counted). */
static __always_inline int submit_first(const struct svct_event *e)
{
	struct svct_first *f = events.ringbuf_reserve(sizeof(struct svct_first));

	if (!f) {
		lost(0);
		return 0;
	}
	__builtin_memcpy(&f->e, e, sizeof(*e));
	f->data_len = 0;
	f->_pad = 0;
	__builtin_memset(f->data, 0, sizeof(f->data)); /* no stale ring bytes reach user space */
#ifdef SVCT_JOIN
	{
		/* read already, for its hash (fold_dest): one copy of first_bytes() fits the
		 * send program's stack, two did not */
		__u32 zero = 0;
		struct svct_first *read = bytes_scratch.lookup(&zero);

		if (read && read->e.ts_ns == e->ts_ns && read->e.tid == e->tid &&
		    read->data_len <= SVCT_DATA_LEN) {
			f->data_len = read->data_len;
			__builtin_memcpy(f->data, read->data, sizeof(f->data));
		}
	}
#else
	first_bytes(f, e->result);
#endif
	events.ringbuf_submit(f, BPF_RB_NO_WAKEUP);
	return 1;
}

#ifdef SVCT_JOIN
/* FNV-1a over the first bytes the current send syscall passed (length included), or 0
 * when none could be read; the bytes stay in bytes_scratch for submit_first(). */
static __always_inline __u64 sent_bytes_hash(const struct svct_event *e)
{
	__u64 hash = 14695981039346656037ULL;
	const __u64 *words;
	struct svct_first *f;
	__u32 zero = 0;

	f = bytes_scratch.lookup(&zero);
	if (!f)
		return 0;
	f->e.ts_ns = e->ts_ns; /* whose bytes these are */
	f->e.tid = e->tid;
	f->data_len = 0;
	__builtin_memset(f->data, 0, sizeof(f->data)); /* words past data_len hash as 0 */
	first_bytes(f, e->result);
	if (!f->data_len)
		return 0;
	hash = (hash ^ f->data_len) * 1099511628211ULL;
	words = (const __u64 *)f->data; /* 8-aligned: data sits at offset 168 */
#pragma unroll
	for (int i = 0; i < SVCT_DATA_LEN / 8; i++)
		hash = (hash ^ words[i]) * 1099511628211ULL;
	return hash;
}
#endif
#endif

TRACEPOINT_PROBE(sock, sock_send_length)
{
	__u32 tid = current_tid(), zero = 0;
	__u16 family = args->family;
	struct send_ctx *sc;
	struct svct_event *e, *out;
	int first = 0;

	/* netlink (glibc name lookups), packet, vsock...: never a service; dropped here so
	 * they cost no ring buffer space */
	if (family != SVCT_AF_INET && family != SVCT_AF_INET6 && family != SVCT_AF_UNIX)
		return 0;
	if (!is_traced(current_tgid()))
		return 0;
	/* Built in per-CPU scratch: most sends are folded (fold_send), and reserving ring
	 * buffer space only to discard it filled the buffer between polls at high rates. */
	e = send_scratch.lookup(&zero);
	if (!e)
		return 0;
	__builtin_memset(e, 0, sizeof(*e));
	if (fill_task(e, SVCT_SEND))
		return 0;
	e->family = family;
	e->proto = proto_of(family, args->protocol);
	e->result = args->ret;
	sc = sending.lookup(&tid);
	if (sc && sc->how == HOW_NONE) /* a send outside the syscalls above (splice...) */
		sc = 0;
	if (family == SVCT_AF_UNIX) {
		unix_dest(e, (const char *)args->sk);
	} else {
		inet_dest(e, (const char *)args->sk);
	}
	/* unconnected datagram sockets: the peer is in the syscall's own arguments */
	if (!e->addr_len && sc) {
		syscall_dest(e, sc);
		mark_dns(sc->fd, e); /* an unconnected query to port 53 (musl, dnspython) */
	}
	if (!e->addr_len) {
		count(CNT_SENDS_UNKNOWN_DEST);
		return 0;
	}
	if (fold_send(e, (__u64)args->sk, &first))
		return 0;
#ifdef SVCT_FIRST_BYTES
	if (first) {
		if (submit_first(e))
			freeze_contact(e);
		return 0;
	}
#endif
	out = reserve();
	if (!out)
		return 0;
	__builtin_memcpy(out, e, sizeof(*out));
	submit(out);
	freeze_contact(e);
	return 0;
}

/* ---- names: getaddrinfo (hosts file, nss) ------------------------------------------- */

/* Between getaddrinfo's entry and return in one thread: its node and its result pointer */
struct gai_call {
	__u64 node;
	__u64 res;
};
BPF_TABLE("lru_hash", __u32, struct gai_call, gai_calls, 1024);
/* 1 while the guard refuses services by host name: each getaddrinfo result stops its
 * process (SIGSTOP, a group stop) until user space has put the addresses of a denied name
 * into the guard's table and sent SIGCONT, so the connect that follows is refused. */
BPF_ARRAY(gai_hold, __u32, 1);
#define SVCT_SIGSTOP_NSS 19

/* Argument and return registers in struct pt_regs, the uprobe's context: -D from ebpf.py
 * (a uapi layout per architecture; <uapi/linux/ptrace.h> is not included, see above) */
#if !defined(OFF_REG_PARM1) || !defined(OFF_REG_PARM4) || !defined(OFF_REG_RC)
#error "pt_regs register offsets must be passed as -D defines"
#endif
static __always_inline __u64 reg(void *ctx, int off)
{
	return *(__u64 *)((char *)ctx + off);
}

/* uprobe on the C library's getaddrinfo(node, service, hints, res) (attached by ebpf.py to
 * the libc file the command maps: a uprobe is bound to one file) */
int uprobe_gai_enter(void *ctx)
{
	struct gai_call c = {.node = reg(ctx, OFF_REG_PARM1), .res = reg(ctx, OFF_REG_PARM4)};
	__u32 tid = current_tid();

	if (!c.node || !c.res || !is_traced(current_tgid()))
		return 0;
	gai_calls.update(&tid, &c);
	return 0;
}

/* uretprobe: on success, *res is the struct addrinfo list (x86-64/aarch64 glibc and musl
 * layout: ai_family at 4, ai_addr at 24, ai_next at 40) */
int uretprobe_gai_return(void *ctx)
{
	__u32 tid = current_tid();
	struct gai_call *pending = gai_calls.lookup(&tid), c;
	const char *ai = 0;
	struct svct_nss *n;

	if (!pending)
		return 0;
	c = *pending;
	gai_calls.delete(&tid);
	if ((int)reg(ctx, OFF_REG_RC) != 0)
		return 0;
	bpf_probe_read_user(&ai, sizeof(ai), (const void *)c.res);
	if (!ai)
		return 0;
	n = events.ringbuf_reserve(sizeof(struct svct_nss));
	if (!n) {
		lost(0);
		return 0;
	}
	__builtin_memset(n, 0, sizeof(*n));
	if (fill_task(&n->head, SVCT_NSS_RESULT)) {
		events.ringbuf_discard(n, BPF_RB_NO_WAKEUP);
		return 0;
	}
	bpf_probe_read_user_str(n->name, sizeof(n->name), (const void *)c.node);
#pragma unroll
	for (int i = 0; i < SVCT_NSS_ADDRS; i++) {
		const char *sa = 0;
		int family = 0;

		if (!ai)
			break;
		bpf_probe_read_user(&family, sizeof(family), ai + 4);
		bpf_probe_read_user(&sa, sizeof(sa), ai + 24);
		if (sa && family == SVCT_AF_INET) {
			bpf_probe_read_user(n->addr + i * 16, 4, sa + 4);
			n->family[i] = SVCT_AF_INET;
		} else if (sa && family == SVCT_AF_INET6) {
			bpf_probe_read_user(n->addr + i * 16, 16, sa + 8);
			n->family[i] = SVCT_AF_INET6;
		}
		n->naddr = i + 1;
		bpf_probe_read_user(&ai, sizeof(ai), ai + 40);
	}
	{
		__u32 zero = 0, *hold = gai_hold.lookup(&zero);
		/* only once the record is sure to reach user space, which resumes the process */
		if (hold && *hold && !bpf_send_signal(SVCT_SIGSTOP_NSS))
			n->head.result = 1;
	}
	events.ringbuf_submit(n, BPF_RB_NO_WAKEUP);
	return 0;
}
