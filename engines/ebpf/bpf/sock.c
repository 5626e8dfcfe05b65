// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * Socket-level load balancing (cgroup sock_addr programs), as Cilium's socket LB: a
 * process on the node (host or pod) that connects to, or sends a datagram to, a service
 * VIP:port gets its destination rewritten to a backend before any packet exists. No
 * per-packet NAT and no conntrack entry for the VIP.
 *
 * - connect4/6:     TCP and connected UDP; records the reverse translation.
 * - sendmsg4/6:     unconnected UDP; records the reverse translation.
 * - recvmsg4/6:     unconnected UDP replies: the backend's address is shown as the VIP.
 * - getpeername4/6: connected sockets report the VIP as their peer.
 *
 * - cgroup_skb/egress: drops the packets of Drop entries (below).
 *
 * Targets: Forward rewrites; Reject fails the call with ECONNREFUSED (bpf_set_retval,
 * kernel 5.18). Drop leaves the destination alone and marks the socket (socket-local
 * storage); the cgroup_skb egress program drops that socket's packets to a Drop entry
 * with "drop + congestion notification", which the stack reports as NET_XMIT_DROP: TCP
 * keeps retransmitting its SYN and a UDP send succeeds (ENOBUFS is not reported without
 * IP_RECVERR), so the client times out as with netfilter's DROP. It runs before neighbour
 * resolution, so the VIP's route does not matter (a tc program would not see a packet to
 * an on-link VIP that never resolves, and the client would get EHOSTUNREACH). Packets of
 * unmarked sockets cost one socket-storage lookup.
 *
 * Minimum kernels: connect/sendmsg hooks 4.17/4.18, recvmsg 5.2, getpeername 5.8,
 * bpf_get_netns_cookie for sock_addr 5.7, bpf_set_retval 5.18, socket-local storage 5.2.
 */
#include "maps.h"

#include <linux/in.h>

#define ECONNREFUSED 111

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Sockets that addressed a Drop entry: their packets are checked on egress. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u8);
} sy_drop_socks SEC(".maps");

static __always_inline struct svc_value *svc_lookup(const __u8 *addr, __be16 port, __u32 proto)
{
	struct svc_key k = { .port = port, .proto = proto, .scope = SCOPE_NODE };

	__builtin_memcpy(k.addr, addr, 16);
	return bpf_map_lookup_elem(&sy_services, &k);
}

static __always_inline void revnat_record(struct bpf_sock_addr *ctx, const struct backend_value *be,
					  const __u8 *vip, __be16 vport)
{
	struct sock_revnat_key k = { .cookie = bpf_get_socket_cookie(ctx), .port = be->port };
	struct sock_revnat_value v = { .port = vport };

	__builtin_memcpy(k.addr, be->addr, 16);
	__builtin_memcpy(v.addr, vip, 16);
	bpf_map_update_elem(&sy_sock_revnat, &k, &v, BPF_ANY);
}

/*
 * Looks the destination up and decides. Returns 1 to let the call go on (with *out set to
 * the backend when it must be rewritten), 0 to fail it with ECONNREFUSED.
 */
static __always_inline int decide(struct bpf_sock_addr *ctx, const __u8 *dst, __be16 port,
				  struct backend_value **out)
{
	struct svc_value *svc = svc_lookup(dst, port, ctx->protocol);
	__u8 client[16] = {};
	__u64 netns;

	*out = NULL;
	if (!svc)
		return 1;
	if (svc->action == ACTION_DROP) {
		struct bpf_sock *sk = ctx->sk;

		if (sk)
			bpf_sk_storage_get(&sy_drop_socks, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		return 1;
	}
	if (svc->action == ACTION_REJECT)
		goto reject;
	netns = bpf_get_netns_cookie(ctx);
	__builtin_memcpy(client, &netns, 8);
	*out = pick_backend(svc, client, SCOPE_NODE);
	if (!*out)
		goto reject;
	return 1;
reject:
	bpf_set_retval(-ECONNREFUSED);
	return 0;
}

static __always_inline int xlate4(struct bpf_sock_addr *ctx)
{
	struct backend_value *be;
	__u8 vip[16];
	__be16 vport = (__be16)ctx->user_port;

	addr_set_v4(vip, ctx->user_ip4);
	if (!decide(ctx, vip, vport, &be))
		return 0;
	if (!be || !addr_is_v4(be->addr))
		return 1;
	ctx->user_ip4 = addr_v4(be->addr);
	ctx->user_port = be->port;
	revnat_record(ctx, be, vip, vport);
	return 1;
}

static __always_inline void read_ip6(struct bpf_sock_addr *ctx, __u8 *addr)
{
	__u32 w[4] = { ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3] };

	__builtin_memcpy(addr, w, 16);
}

static __always_inline void write_ip6(struct bpf_sock_addr *ctx, const __u8 *addr)
{
	__u32 w[4];

	__builtin_memcpy(w, addr, 16);
	ctx->user_ip6[0] = w[0];
	ctx->user_ip6[1] = w[1];
	ctx->user_ip6[2] = w[2];
	ctx->user_ip6[3] = w[3];
}

/* IPv6 sockets, including dual-stack ones reaching an IPv4 VIP as ::ffff:VIP. */
static __always_inline int xlate6(struct bpf_sock_addr *ctx)
{
	struct backend_value *be;
	__u8 vip[16];
	__be16 vport = (__be16)ctx->user_port;

	read_ip6(ctx, vip);
	if (!decide(ctx, vip, vport, &be))
		return 0;
	if (!be || addr_is_v4(vip) != addr_is_v4(be->addr))
		return 1;
	write_ip6(ctx, be->addr);
	ctx->user_port = be->port;
	revnat_record(ctx, be, vip, vport);
	return 1;
}

static __always_inline struct sock_revnat_value *revnat_lookup(struct bpf_sock_addr *ctx,
							       const __u8 *addr)
{
	struct sock_revnat_key k = { .cookie = bpf_get_socket_cookie(ctx),
				     .port = (__be16)ctx->user_port };

	__builtin_memcpy(k.addr, addr, 16);
	return bpf_map_lookup_elem(&sy_sock_revnat, &k);
}

static __always_inline int revnat4(struct bpf_sock_addr *ctx)
{
	struct sock_revnat_value *v;
	__u8 addr[16];

	addr_set_v4(addr, ctx->user_ip4);
	v = revnat_lookup(ctx, addr);
	if (v && addr_is_v4(v->addr)) {
		ctx->user_ip4 = addr_v4(v->addr);
		ctx->user_port = v->port;
	}
	return 1;
}

static __always_inline int revnat6(struct bpf_sock_addr *ctx)
{
	struct sock_revnat_value *v;
	__u8 addr[16];

	read_ip6(ctx, addr);
	v = revnat_lookup(ctx, addr);
	if (v) {
		write_ip6(ctx, v->addr);
		ctx->user_port = v->port;
	}
	return 1;
}

SEC("cgroup/connect4")
int sy_connect4(struct bpf_sock_addr *ctx)
{
	return xlate4(ctx);
}

SEC("cgroup/sendmsg4")
int sy_sendmsg4(struct bpf_sock_addr *ctx)
{
	return xlate4(ctx);
}

SEC("cgroup/recvmsg4")
int sy_recvmsg4(struct bpf_sock_addr *ctx)
{
	return revnat4(ctx);
}

SEC("cgroup/getpeername4")
int sy_getpeername4(struct bpf_sock_addr *ctx)
{
	return revnat4(ctx);
}

SEC("cgroup/connect6")
int sy_connect6(struct bpf_sock_addr *ctx)
{
	return xlate6(ctx);
}

SEC("cgroup/sendmsg6")
int sy_sendmsg6(struct bpf_sock_addr *ctx)
{
	return xlate6(ctx);
}

SEC("cgroup/recvmsg6")
int sy_recvmsg6(struct bpf_sock_addr *ctx)
{
	return revnat6(ctx);
}

SEC("cgroup/getpeername6")
int sy_getpeername6(struct bpf_sock_addr *ctx)
{
	return revnat6(ctx);
}

#define CGROUP_SKB_PASS 1
#define CGROUP_SKB_DROP_CN 2

/* Drops a marked socket's packets whose destination is a node-scope Drop entry. */
SEC("cgroup_skb/egress")
int sy_drop_egress(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	struct svc_key k = { .scope = SCOPE_NODE };
	struct svc_value *svc;
	__u32 l4;

	if (!sk)
		return CGROUP_SKB_PASS;
	sk = bpf_sk_fullsock(sk);
	if (!sk || !bpf_sk_storage_get(&sy_drop_socks, sk, 0, 0))
		return CGROUP_SKB_PASS;
	if (skb->protocol == bpf_htons(0x0800)) {
		__u8 vihl;
		__be32 daddr;

		if (bpf_skb_load_bytes(skb, 0, &vihl, 1) || bpf_skb_load_bytes(skb, 16, &daddr, 4) ||
		    bpf_skb_load_bytes(skb, 9, &k.proto, 1))
			return CGROUP_SKB_PASS;
		addr_set_v4(k.addr, daddr);
		l4 = (vihl & 0x0f) * 4;
	} else if (skb->protocol == bpf_htons(0x86dd)) {
		if (bpf_skb_load_bytes(skb, 24, k.addr, 16) || bpf_skb_load_bytes(skb, 6, &k.proto, 1))
			return CGROUP_SKB_PASS;
		l4 = 40;
	} else {
		return CGROUP_SKB_PASS;
	}
	if (bpf_skb_load_bytes(skb, l4 + 2, &k.port, 2))
		return CGROUP_SKB_PASS;
	svc = bpf_map_lookup_elem(&sy_services, &k);
	if (svc && svc->action == ACTION_DROP)
		return CGROUP_SKB_DROP_CN;
	return CGROUP_SKB_PASS;
}
