/* guard.h: the kernel/user contract of the tier guard (guard.bpf.c).
 *
 * What user space writes into the guard's maps (struct guard_key, struct verdict, struct
 * unix_path, struct pattern: filled by svctrace.guard.kernel from the table that
 * svctrace.guard.rules compiles) and the ring buffer record of one refusal (struct
 * guard_event: decoded with svctrace.guard.kernel._EVENT). Fixed-width fields, no implicit
 * padding. tests/test_kernel_contract.py checks every field, kind and constant against the
 * Python side: change both in the same commit.
 */
#ifndef SVCT_GUARD_H
#define SVCT_GUARD_H

#define GUARD_COMM_LEN 16
#define UNIX_PATH 108	/* sizeof(((struct sockaddr_un *)0)->sun_path) */
#define UNIX_BUF 128	/* path buffers: a power of two, so "& 0x7f" keeps the verifier happy */
#define PATTERN_MAX 64	/* bytes of a basename prefix (".s.PGSQL." of a glob on any folder) */
#define N_STAGES 10	/* precedence levels of the inet rules, looked up in order: ignore,
			 * user, noise, internet, default; each with and without a port */

/* verdict.action */
enum guard_action {
	ACT_ALLOW = 0,
	ACT_DENY = 1,
};

/* guard_event.kind: which hook refused */
enum guard_kind {
	KIND_CONNECT = 1,	/* connect(2): inet or unix */
	KIND_SENDMSG = 2,	/* an unconnected UDP send (sendto, sendmsg) */
};

/* One inet rule: an LPM trie key. prefixlen counts the bits after it that must match. */
struct guard_key {
	__u32 prefixlen;	/* bits of what follows that must match */
	__u8 stage;		/* precedence level (always matched) */
	__u8 family;		/* AF_INET | AF_INET6 (IPv4-mapped IPv6 is looked up as AF_INET) */
	__u8 proto;		/* IPPROTO_TCP | IPPROTO_UDP */
	__u8 pad;
	__u16 port;		/* network byte order: its bits compare most significant first */
	__u8 addr[16];
	__u8 pad2[2];
};

struct verdict {
	__u16 action;		/* enum guard_action */
	__u16 service;		/* index into the service names user space holds */
	__u32 rank;		/* unix: precedence, lower wins */
};

struct unix_path {
	char path[UNIX_BUF];	/* sun_path (UNIX_PATH bytes at most), zero padded */
};

struct pattern {
	__u32 len;		/* bytes of prefix that must match the basename's start */
	__u32 exact;		/* 1: the basename must end there too */
	struct verdict verdict;
	char prefix[PATTERN_MAX];
};

/* One refusal, as the ring buffer carries it. */
struct guard_event {
	__u64 ts;		/* bpf_ktime_get_ns: CLOCK_MONOTONIC */
	__u32 pid;		/* in svctrace's pid namespace */
	__u32 tid;
	__s32 result;		/* -errno the program made the operation return */
	__u16 service;
	__u16 port;		/* host byte order */
	__u8 kind;		/* enum guard_kind */
	__u8 family;
	__u8 proto;
	__u8 addr_len;
	char comm[GUARD_COMM_LEN];
	__u8 addr[UNIX_BUF];
	__u32 pad;
};				/* sizeof == 176 */

#endif
