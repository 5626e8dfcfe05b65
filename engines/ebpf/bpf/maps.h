/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Switchyard's BPF map layout, shared by sock.c (cgroup socket-LB programs) and tc.c
 * (tc NodePort / LB / external-IP programs). Every map is pinned by name, so the two
 * objects share one instance of each, and a restarted loader reuses them.
 *
 * The Rust mirror of every struct here is engines/ebpf/src/layout.rs; a change to either
 * is a layout change: bump LAYOUT_VERSION there (maps then live in a new pin directory,
 * built beside the old ones).
 *
 * Addresses are 16 bytes everywhere; IPv4 is written IPv4-mapped (::ffff:a.b.c.d), so a
 * dual-stack socket connecting to ::ffff:VIP is translated by connect6 like connect4
 * would translate VIP. Ports are in network byte order, as the kernel hands them over.
 */
#ifndef SWITCHYARD_MAPS_H
#define SWITCHYARD_MAPS_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* Service scope: who is the client. */
#define SCOPE_NODE 0     /* a process on this node (host or pod): socket LB */
#define SCOPE_EXTERNAL 1 /* a packet from outside the node: tc */

/* What a service entry does. */
#define ACTION_FORWARD 0 /* pick one of `count` backends */
#define ACTION_DROP 1    /* the client sees a timeout */
#define ACTION_REJECT 2  /* ECONNREFUSED (socket LB), TCP RST / ICMP unreachable (tc) */

/* Service flags. */
#define SVC_F_MASQUERADE 1    /* tc: SNAT the client to the node address */
#define SVC_F_SOURCE_RANGES 2 /* tc: drop clients outside the source ranges */
#define SVC_F_AFFINITY 4      /* ClientIP affinity for affinity_timeout seconds */

/* Backend sets of one service id: which target of the plan the slots hold. */
#define TARGET_INTERNAL 0      /* cluster traffic (iTP applied) */
#define TARGET_EXTERNAL 1      /* external traffic from outside (eTP applied) */
#define TARGET_SHORT_CIRCUIT 2 /* external VIPs reached from the node or its pods */

struct svc_key {
	__u8 addr[16];
	__be16 port;
	__u8 proto; /* IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP */
	__u8 scope; /* SCOPE_* */
};

struct svc_value {
	__u32 id;               /* the plan's stable service-port id */
	__u16 count;            /* backend slots 0..count-1 of (id, target) are valid */
	__u8 action;            /* ACTION_* */
	__u8 flags;             /* SVC_F_* */
	__u32 affinity_timeout; /* seconds, with SVC_F_AFFINITY */
	__u8 target;            /* TARGET_*: which backend set */
	__u8 pad[3];
};

struct backend_key {
	__u32 id;
	__u16 slot;
	__u8 target;
	__u8 pad;
};

struct backend_value {
	__u8 addr[16];
	__be16 port;
	__u8 flags; /* BACKEND_F_LOCAL */
	__u8 pad;
};

#define BACKEND_F_LOCAL 1

/* ClientIP affinity: the client is its address (tc) or, for socket LB where the source
 * address is not known at connect time, its network namespace cookie (as Cilium does). */
struct affinity_key {
	__u8 client[16];
	__u32 id;
	__u8 scope;
	__u8 target;
	__u8 pad[2];
};

struct affinity_value {
	__u64 last_used_ns; /* bpf_ktime_get_ns of the last connection */
	__u8 addr[16];      /* the backend chosen */
	__be16 port;
	__u16 slot;
	__u8 pad[4];
};

/* LPM key: the service id (big-endian, so a prefix of 32 bits selects the service) then
 * the client address; prefixlen counts from the id's first bit. */
struct src_range_key {
	__u32 prefixlen;
	__u8 data[20];
};

/* Socket-LB reverse translation (recvmsg / getpeername): what a socket actually talks to
 * back to the VIP it asked for. */
struct sock_revnat_key {
	__u64 cookie; /* bpf_get_socket_cookie */
	__u8 addr[16];
	__be16 port;
	__u8 pad[6];
};

struct sock_revnat_value {
	__u8 addr[16];
	__be16 port;
	__u8 pad[6];
};

/* tc connection tracking: one flow as seen in one direction. */
struct flow_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* The rewrite for a flow: new source and destination. */
struct flow_nat {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 pad[4];
};

/* Node-wide settings, one array slot each. */
#define CONFIG_SNAT_V4 0 /* node IPv4 address (mapped) used as masquerade source */
#define CONFIG_SNAT_V6 1 /* node IPv6 address used as masquerade source */
#define CONFIG_SLOTS 2

struct config_value {
	__u8 addr[16];
	__u8 set;
	__u8 pad[7];
};

/* Default sizes; the loader overrides max_entries from its configuration. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct svc_key);
	__type(value, struct svc_value);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sy_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct backend_key);
	__type(value, struct backend_value);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sy_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct affinity_key);
	__type(value, struct affinity_value);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sy_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct src_range_key);
	__type(value, __u8);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sy_src_ranges SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct sock_revnat_key);
	__type(value, struct sock_revnat_value);
	__uint(max_entries, 131072);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sy_sock_revnat SEC(".maps");

/* tc: client-side flow (as the client sent it) -> rewrite towards the backend. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct flow_key);
	__type(value, struct flow_nat);
	__uint(max_entries, 131072);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sy_nat_fwd SEC(".maps");

/* tc: backend-side flow (as the backend replies) -> rewrite back towards the client. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct flow_key);
	__type(value, struct flow_nat);
	__uint(max_entries, 131072);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sy_nat_rev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct config_value);
	__uint(max_entries, CONFIG_SLOTS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sy_config SEC(".maps");

/* Shared lookup logic. */

static __always_inline void addr_set_v4(__u8 *addr, __be32 ip4)
{
	__builtin_memset(addr, 0, 10);
	addr[10] = 0xff;
	addr[11] = 0xff;
	__builtin_memcpy(addr + 12, &ip4, 4);
}

static __always_inline int addr_eq(const __u8 *a, const __u8 *b)
{
	__u64 a0, a1, b0, b1;
	__builtin_memcpy(&a0, a, 8);
	__builtin_memcpy(&a1, a + 8, 8);
	__builtin_memcpy(&b0, b, 8);
	__builtin_memcpy(&b1, b + 8, 8);
	return a0 == b0 && a1 == b1;
}

static __always_inline int addr_is_v4(const __u8 *addr)
{
	__u64 lo;
	__u32 mid;
	__builtin_memcpy(&lo, addr, 8);
	__builtin_memcpy(&mid, addr + 8, 4);
	return lo == 0 && mid == bpf_htonl(0x0000ffff);
}

static __always_inline __be32 addr_v4(const __u8 *addr)
{
	__be32 ip4;
	__builtin_memcpy(&ip4, addr + 12, 4);
	return ip4;
}

/* Whether an affinity entry is still fresh; refreshes it when it is. */
static __always_inline int affinity_fresh(struct affinity_value *a, __u32 timeout_s, __u64 now)
{
	if (now - a->last_used_ns > (__u64)timeout_s * 1000000000ULL)
		return 0;
	a->last_used_ns = now;
	return 1;
}

/*
 * Picks the backend for a forwarding service entry: the affinity entry's backend when it
 * is fresh and its slot still holds it, else a random slot (recorded for affinity).
 * Returns NULL when the service has no usable backend.
 */
static __always_inline struct backend_value *
pick_backend(const struct svc_value *svc, const __u8 *client, __u8 scope)
{
	struct backend_key bk = { .id = svc->id, .target = svc->target };
	struct affinity_key ak = {};
	struct backend_value *be;
	__u64 now = 0;

	if (svc->count == 0)
		return NULL;
	if (svc->flags & SVC_F_AFFINITY) {
		struct affinity_value *av;

		__builtin_memcpy(ak.client, client, 16);
		ak.id = svc->id;
		ak.scope = scope;
		ak.target = svc->target;
		now = bpf_ktime_get_ns();
		av = bpf_map_lookup_elem(&sy_affinity, &ak);
		if (av && av->slot < svc->count && affinity_fresh(av, svc->affinity_timeout, now)) {
			bk.slot = av->slot;
			be = bpf_map_lookup_elem(&sy_backends, &bk);
			if (be && be->port == av->port && addr_eq(be->addr, av->addr))
				return be;
		}
	}
	bk.slot = bpf_get_prandom_u32() % svc->count;
	be = bpf_map_lookup_elem(&sy_backends, &bk);
	if (!be)
		return NULL;
	if (svc->flags & SVC_F_AFFINITY) {
		struct affinity_value nv = { .last_used_ns = now, .port = be->port, .slot = bk.slot };

		__builtin_memcpy(nv.addr, be->addr, 16);
		bpf_map_update_elem(&sy_affinity, &ak, &nv, BPF_ANY);
	}
	return be;
}

#endif
