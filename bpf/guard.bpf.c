/* guard.bpf.c: the tier guard. cgroup v2 CGROUP_SOCK_ADDR programs that refuse, for the
 * processes of one cgroup (the command's tree), every connect and unconnected UDP send to
 * a destination the service map names as a denied service.
 *
 * The deny table is compiled in user space (svctrace.guard.rules) from the service map,
 * with its precedence: user ignore list, user rules, default noise, default rules.
 *   inet: one LPM trie keyed (stage, family, protocol, port, address); a stage is one
 *         precedence level, looked up in order; the first stage that matches decides.
 *   unix: exact paths (hash) and basename prefixes (the ".s.PGSQL." of a glob on any folder),
 *         with a rank; the lowest rank that matches decides.
 * A refusal is a ring buffer record for user space and a per-service counter.
 * What user space writes into the maps and reads from the ring buffer: guard.h.
 * Settings (-D): PIDNS_DEV, PIDNS_INO (pids of svctrace's namespace), STAGES (bitmask of
 * stages that have entries), N_PATTERNS, HAS_SET_RETVAL (bpf_set_retval in sock_addr
 * programs), SHADOW (record what would be refused and refuse nothing: `run --shadow`).
 * The guard cgroup (for the connect tracepoint) is a map, not a -D: the compiled program
 * is kept for the next run (svctrace.kernel.bpf_program), whose cgroup is another.
 */
#include <uapi/linux/bpf.h>
#include <linux/in.h>
#include <linux/socket.h>
#include "guard.h"
#include "bcc_quick.h"

#define ERR_REFUSED 111	/* ECONNREFUSED: a client reports it at once ("Connection refused") */
#define ERR_PERM 1	/* EPERM: what the kernel returns when no retval was set */

#ifndef N_PATTERNS
#define N_PATTERNS 0
#endif
#ifndef STAGES
#define STAGES 0x3ff
#endif
/* What refuse() makes the hook return: 0 refuses; a shadow guard lets the operation go on. */
#ifdef SHADOW
#define REFUSE_VERDICT 1
#else
#define REFUSE_VERDICT 0
#endif

BPF_LPM_TRIE(inet_rules, struct guard_key, struct verdict, MAX_RULES);
BPF_HASH(unix_exact, struct unix_path, struct verdict, MAX_PATHS);
BPF_ARRAY(unix_patterns, struct pattern, N_PATTERNS > 0 ? N_PATTERNS : 1);
/* A unix connect in flight, saved by the connect tracepoint: its path, length, basename. */
struct pending {
	struct unix_path p;
	char base[PATTERN_MAX];
	__u32 len;
	__u32 pad;
};
BPF_HASH(unix_pending, __u32, struct pending, 8192);	/* tid -> its unix connect in flight */
BPF_PERCPU_ARRAY(scratch, struct pending, 1);
BPF_PERCPU_ARRAY(denials, __u64, MAX_SERVICES);	/* refusals per service */
BPF_PERCPU_ARRAY(lost, __u64, 1);	/* records the ring buffer refused */
BPF_RINGBUF_OUTPUT(refusals, RINGBUF_PAGES);
BPF_ARRAY(guard_cgroup, __u64, 2);	/* [0] its id, [1] its level */

static __always_inline int refuse(struct bpf_sock_addr *ctx, const struct verdict *v,
				  __u8 kind, __u8 family, __u8 proto, __u16 port,
				  const void *addr, __u32 addr_len)
{
	int err = ERR_PERM;
#ifdef SHADOW
	err = 0;	/* the record says what would have been refused; the operation goes on */
#elif defined(HAS_SET_RETVAL)
	/* A TCP or unix client reports ECONNREFUSED at once; for UDP keep EPERM, which the
	 * contact rule reads as a local refusal, never as a TCP handshake (services.judge). */
	if (proto != IPPROTO_UDP) {
		bpf_set_retval(-ERR_REFUSED);
		err = ERR_REFUSED;
	}
#endif
	__u32 slot = v->service;
	__u64 *count = denials.lookup(&slot);
	if (count)
		*count += 1;
	struct guard_event *e = refusals.ringbuf_reserve(sizeof(*e));
	if (!e) {
		__u32 zero = 0;
		__u64 *n = lost.lookup(&zero);
		if (n)
			*n += 1;
		return REFUSE_VERDICT;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->ts = bpf_ktime_get_ns();
	struct bpf_pidns_info ns = {};
	if (bpf_get_ns_current_pid_tgid(PIDNS_DEV, PIDNS_INO, &ns, sizeof(ns)) == 0) {
		e->pid = ns.tgid;
		e->tid = ns.pid;
	}
	e->result = -err;
	e->service = v->service;
	e->port = port;
	e->kind = kind;
	e->family = family;
	e->proto = proto;
	e->addr_len = addr_len;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	addr_len &= 0x7f;
	if (addr_len > 0)
		bpf_probe_read_kernel(e->addr, addr_len, addr);
	refusals.ringbuf_submit(e, 0);
	return REFUSE_VERDICT;
}

static __always_inline int decide_inet(struct bpf_sock_addr *ctx, __u8 kind, __u8 family,
				       const __u32 *ip, __u32 ip_words)
{
	__u8 proto = ctx->protocol;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 1;
	struct guard_key key = {};
	key.family = family;
	key.proto = proto;
	__builtin_memcpy(key.addr, ip, 4);
	if (ip_words == 4)
		__builtin_memcpy(key.addr, ip, 16);
	__u16 port = (__u16)ctx->user_port;
#pragma unroll
	for (int stage = 0; stage < N_STAGES; stage++) {
		if (!(STAGES & (1 << stage)))
			continue;
		key.stage = stage;
		key.port = (stage & 1) ? 0 : port;	/* odd stages hold rules without a port */
		key.prefixlen = 32 + 16 + (family == AF_INET ? 32 : 128);
		struct verdict *v = inet_rules.lookup(&key);
		if (v) {
			if (v->action != ACT_DENY)
				return 1;
			return refuse(ctx, v, kind, family, proto, bpf_ntohs(port), ip,
				      family == AF_INET ? 4 : 16);
		}
	}
	return 1;
}

static __always_inline int inet4(struct bpf_sock_addr *ctx, __u8 kind)
{
	__u32 ip = ctx->user_ip4;
	return decide_inet(ctx, kind, AF_INET, &ip, 1);
}

static __always_inline int inet6(struct bpf_sock_addr *ctx, __u8 kind)
{
	__u32 ip[4];
	ip[0] = ctx->user_ip6[0];
	ip[1] = ctx->user_ip6[1];
	ip[2] = ctx->user_ip6[2];
	ip[3] = ctx->user_ip6[3];
	if (ip[0] == 0 && ip[1] == 0 && ip[2] == bpf_htonl(0xffff)) {
		__u32 v4 = ip[3];	/* IPv4-mapped: one spelling per address (services.canonical) */
		return decide_inet(ctx, kind, AF_INET, &v4, 1);
	}
	return decide_inet(ctx, kind, AF_INET6, ip, 4);
}

int guard_connect4(struct bpf_sock_addr *ctx) { return inet4(ctx, KIND_CONNECT); }
int guard_connect6(struct bpf_sock_addr *ctx) { return inet6(ctx, KIND_CONNECT); }
int guard_sendmsg4(struct bpf_sock_addr *ctx) { return inet4(ctx, KIND_SENDMSG); }
int guard_sendmsg6(struct bpf_sock_addr *ctx) { return inet6(ctx, KIND_SENDMSG); }

/* The unix connect hook (attach type BPF_CGROUP_UNIX_CONNECT, Linux 6.7+) gives no path a
 * bcc program can read without kfuncs: the connect tracepoint saves it per thread first. */
TRACEPOINT_PROBE(syscalls, sys_enter_connect)
{
	__u32 id_slot = 0, level_slot = 1;
	__u64 *cgid = guard_cgroup.lookup(&id_slot), *level = guard_cgroup.lookup(&level_slot);
	if (!cgid || !level || !*cgid || bpf_get_current_ancestor_cgroup_id(*level) != *cgid)
		return 0;
	__u16 family = 0;
	bpf_probe_read_user(&family, sizeof(family), (void *)args->uservaddr);
	if (family != AF_UNIX)
		return 0;
	__u32 zero = 0;
	struct pending *pe = scratch.lookup(&zero);
	if (!pe)
		return 0;
	__builtin_memset(pe, 0, sizeof(*pe));
	const char *src = (const char *)args->uservaddr + 2;
	char first = 0;
	bpf_probe_read_user(&first, 1, src);
	int n = 0;
	if (first) {
		n = bpf_probe_read_user_str(pe->p.path, UNIX_PATH, src) - 1;	/* without the NUL */
	} else {	/* abstract name: exactly addrlen - 2 bytes, NULs included */
		__u32 len = ((__u32)args->addrlen - 2) & 0x7f;
		if (len > 0 && len <= UNIX_PATH)
			bpf_probe_read_user(pe->p.path, len, src);
		n = len;
	}
	if (n <= 0)
		return 0;
	pe->len = n;
	if (first) {
		/* The basename starts after the last '/'. Branch-free on purpose: 108 branches in
		 * a row would make the verifier walk every combination of them. */
		__u64 base = 0;
#pragma unroll
		for (__u64 i = 0; i < UNIX_PATH; i++) {
			__u64 slash = (((__u64)(__u8)pe->p.path[i] ^ '/') - 1) >> 63;	/* 1 iff '/' */
			base += slash * (i + 1 - base);
		}
		bpf_probe_read_kernel(pe->base, PATTERN_MAX, &pe->p.path[base & 0x7f]);
	}
	__u32 tid = bpf_get_current_pid_tgid();
	unix_pending.update(&tid, pe);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_connect)
{
	__u32 tid = bpf_get_current_pid_tgid();
	unix_pending.delete(&tid);
	return 0;
}

int guard_connect_unix(struct bpf_sock_addr *ctx)
{
	__u32 tid = bpf_get_current_pid_tgid();
	struct pending *pe = unix_pending.lookup(&tid);
	if (!pe)
		return 1;	/* not from connect(2) (io_uring): README says what the guard cannot see */
	struct verdict best = {.action = ACT_ALLOW, .rank = 0xffffffff};
	struct verdict *v = unix_exact.lookup(&pe->p);
	if (v)
		best = *v;
#if N_PATTERNS > 0
	for (int n = 0; n < N_PATTERNS; n++) {
		__u32 key = n;
		struct pattern *pat = unix_patterns.lookup(&key);
		if (!pat || pat->verdict.rank >= best.rank || pe->p.path[0] == 0)
			continue;
		__u64 len = pat->len;
		__u64 diff = 0;
		for (__u64 j = 0; j < PATTERN_MAX; j++) {	/* branch-free, as above */
			__u64 inside = (j - len) >> 63;	/* 1 iff j < len */
			diff |= inside * (__u8)(pe->base[j] ^ pat->prefix[j]);
		}
		if (!diff && pat->exact && pe->base[len & (PATTERN_MAX - 1)])
			diff = 1;
		if (!diff)
			best = pat->verdict;
	}
#endif
	if (best.action != ACT_DENY)
		return 1;
	return refuse(ctx, &best, KIND_CONNECT, AF_UNIX, 0, 0, pe->p.path, pe->len);
}
