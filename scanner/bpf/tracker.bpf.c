// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/*
 * connhealth's TCP state tracker: one program (two entry points, below) on
 * the tracepoint sock:inet_sock_set_state, which the kernel fires on every
 * TCP state change of every network namespace.
 *
 * It keeps, per network namespace (by its inode number, what `ls -iL
 * /proc/PID/ns/net` prints), a count of TCP state changes: userspace
 * (scanner/src/tracker.rs) compares it with the value read before the
 * namespace's last sock_diag dump to know whether its sockets can have
 * changed. And per CLOSE_WAIT socket, keyed by namespace and 4-tuple, the
 * CLOCK_MONOTONIC time it entered CLOSE_WAIT, removed when it leaves.
 *
 * Why a BTF or raw tracepoint rather than a classic one: both attach by
 * name (BPF_RAW_TRACEPOINT_OPEN), so the agent needs no tracefs mount; the
 * socket's fields are CO-RE relocated against the running kernel's BTF at
 * load time.
 * No vmlinux.h: the few kernel types below are declared with only the
 * fields read, marked preserve_access_index.
 *
 * Licence: the kernel accepts tracing programs only under a GPL-compatible
 * licence string; this file is dual GPL-2.0 / BSD-2-Clause.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#define IPPROTO_TCP 6
#define AF_INET 2
#define AF_INET6 10
#define TCP_CLOSE_WAIT 8

/* Kept in step with scanner/src/tracker.rs (map names, sizes, layouts). */
#define CHANGE_SLOTS 65536 /* a power of two */
#define MAX_CLOSE_WAIT 16384

struct ns_common { unsigned int inum; } __attribute__((preserve_access_index));
struct net { struct ns_common ns; } __attribute__((preserve_access_index));
typedef struct { struct net *net; } __attribute__((preserve_access_index)) possible_net_t;
struct in6_addr { union { __u8 u6_addr8[16]; } in6_u; } __attribute__((preserve_access_index));
struct sock_common {
    __be32 skc_daddr;
    __be32 skc_rcv_saddr;
    __be16 skc_dport;
    __u16 skc_num;
    unsigned short skc_family;
    possible_net_t skc_net;
    struct in6_addr skc_v6_daddr;
    struct in6_addr skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));
struct sock {
    struct sock_common __sk_common;
    __u16 sk_protocol;
} __attribute__((preserve_access_index));

/* A CLOSE_WAIT socket: what a sock_diag dump shows of it, ports in host
 * order, IPv4 addresses in the first 4 bytes. 44 bytes, no padding. */
struct close_wait_key {
    __u32 netns;
    __u16 family;
    __u16 local_port;
    __u16 remote_port;
    __u16 zero;
    __u8 local[16];
    __u8 remote[16];
};

/* TCP state changes per namespace, in the slot of its inode number modulo
 * CHANGE_SLOTS. An array, not a hash: no lookup cost, never full. Inode
 * numbers come from one compact kernel allocator, so two live namespaces
 * share a slot only past 65536 namespace-like objects; if they do, a change
 * in one makes the other look changed too (an extra dump, never a missed
 * one). 512 KiB. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, CHANGE_SLOTS);
    __type(key, __u32);
    __type(value, __u64);
} NETNS_CHANGES SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, MAX_CLOSE_WAIT);
    __type(key, struct close_wait_key);
    __type(value, __u64); /* bpf_ktime_get_ns() when it entered CLOSE_WAIT */
} CLOSE_WAIT SEC(".maps");

/* Counters, summed over CPUs by userspace. */
enum { STAT_CLOSE_WAIT_FULL, STAT_MAX };
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, STAT_MAX);
    __type(key, __u32);
    __type(value, __u64);
} STATS SEC(".maps");

static __always_inline void count(__u32 stat)
{
    __u64 *v = bpf_map_lookup_elem(&STATS, &stat);
    if (v)
        *v += 1; /* per-CPU slot: no other writer */
}

/* One more state change in namespace `netns`. */
static __always_inline void count_change(__u32 netns)
{
    __u32 slot = netns & (CHANGE_SLOTS - 1);
    __u64 *changes = bpf_map_lookup_elem(&NETNS_CHANGES, &slot);
    if (changes)
        __sync_fetch_and_add(changes, 1);
}

/* Whether the change enters or leaves CLOSE_WAIT (and so needs its key). */
static __always_inline int touches_close_wait(int oldstate, int newstate)
{
    return oldstate != newstate && (newstate == TCP_CLOSE_WAIT || oldstate == TCP_CLOSE_WAIT);
}

/* Files the socket `key` under its CLOSE_WAIT entry time, or forgets it. */
static __always_inline void close_wait_change(struct close_wait_key *key, int newstate)
{
    if (newstate == TCP_CLOSE_WAIT) {
        __u64 entered = bpf_ktime_get_ns();
        if (bpf_map_update_elem(&CLOSE_WAIT, key, &entered, BPF_ANY))
            count(STAT_CLOSE_WAIT_FULL); /* aged by the tcp_info lookup instead */
    } else {
        /* A miss is normal: it entered CLOSE_WAIT before the program was
         * attached, or the map was full then. */
        bpf_map_delete_elem(&CLOSE_WAIT, key);
    }
}

/* Completes `key` (family, ports and the IPv4 addresses read by the caller)
 * with the IPv6 addresses where they apply, and files the change. */
static __always_inline void close_wait_socket(struct close_wait_key *key, struct sock *sk, __be32 local4,
                                              __be32 remote4, int newstate)
{
    if (key->family == AF_INET) {
        __builtin_memcpy(key->local, &local4, 4);
        __builtin_memcpy(key->remote, &remote4, 4);
    } else if (key->family == AF_INET6) {
        BPF_CORE_READ_INTO(&key->local, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
        BPF_CORE_READ_INTO(&key->remote, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
    } else {
        return;
    }
    close_wait_change(key, newstate);
}

/*
 * Two entry points with the same effect; userspace attaches the first that
 * loads. tp_btf (a BTF-typed tracepoint) reads the socket with plain loads
 * the verifier checks against the kernel's types; the raw tracepoint,
 * for kernels or sandboxes that refuse tp_btf, copies each field with
 * bpf_probe_read_kernel (BPF_CORE_READ), about 60 ns more per change.
 */

SEC("tp_btf/inet_sock_set_state")
int on_state_change_btf(unsigned long long *ctx)
{
    struct sock *sk = (struct sock *)ctx[0];
    int oldstate = (int)ctx[1];
    int newstate = (int)ctx[2];

    if (sk->sk_protocol != IPPROTO_TCP)
        return 0;
    __u32 netns = sk->__sk_common.skc_net.net->ns.inum;
    count_change(netns);
    if (!touches_close_wait(oldstate, newstate))
        return 0;

    struct close_wait_key key = {};
    key.netns = netns;
    key.family = sk->__sk_common.skc_family;
    key.local_port = sk->__sk_common.skc_num;
    key.remote_port = bpf_ntohs(sk->__sk_common.skc_dport);
    close_wait_socket(&key, sk, sk->__sk_common.skc_rcv_saddr, sk->__sk_common.skc_daddr, newstate);
    return 0;
}

SEC("raw_tracepoint/inet_sock_set_state")
int on_state_change_raw(struct bpf_raw_tracepoint_args *ctx)
{
    struct sock *sk = (struct sock *)ctx->args[0];
    int oldstate = (int)ctx->args[1];
    int newstate = (int)ctx->args[2];

    if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
        return 0;
    __u32 netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
    count_change(netns);
    if (!touches_close_wait(oldstate, newstate))
        return 0;

    struct close_wait_key key = {};
    key.netns = netns;
    key.family = BPF_CORE_READ(sk, __sk_common.skc_family);
    key.local_port = BPF_CORE_READ(sk, __sk_common.skc_num);
    key.remote_port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
    close_wait_socket(&key, sk, BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr),
                      BPF_CORE_READ(sk, __sk_common.skc_daddr), newstate);
    return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
