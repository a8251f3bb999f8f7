/* bcc_quick.h: bcc compiles a program that includes this ~0.5 s faster.
 *
 * bcc's rewriter looks every call of bpf_probe_read_user(_str) up in /proc/kallsyms (for
 * kernels that backported the helpers), and loading all kernel symbols was half of each
 * compile. Both helpers exist since Linux 5.5 (svctrace needs 5.7): call them by helper
 * id, under names bcc does not look up. Same helpers, same arguments.
 */
#ifndef SVCT_BCC_QUICK_H
#define SVCT_BCC_QUICK_H

static long (*svct_probe_read_user)(void *dst, __u32 size, const void *unsafe_ptr) =
	(void *)BPF_FUNC_probe_read_user;
static long (*svct_probe_read_user_str)(void *dst, __u32 size, const void *unsafe_ptr) =
	(void *)BPF_FUNC_probe_read_user_str;
#define bpf_probe_read_user svct_probe_read_user
#define bpf_probe_read_user_str svct_probe_read_user_str

#endif
