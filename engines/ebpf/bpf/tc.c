// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * NodePort, LoadBalancer and external-IP traffic from outside the node (tc sched_cls),
 * IPv4 and IPv6, TCP and UDP.
 *
 * Ingress (external interfaces, and the interfaces facing local backends):
 *   1. a reply from a backend of a translated flow (sy_nat_rev) is translated back;
 *   2. a later packet of a translated client flow (sy_nat_fwd) gets the same rewrite;
 *   3. a new packet to an external-scope service entry: source-range check (LPM trie),
 *      Drop (shot), Reject (TCP RST or ICMP port unreachable sent back out the interface),
 *      else DNAT to a backend and, for masquerade entries (eTP=Cluster), SNAT to the node
 *      address; both directions are recorded in the LRU flow maps.
 *   A rewritten packet is sent on by the program itself (bpf_fib_lookup, then
 *   bpf_redirect_neigh to the egress device, kernel 5.10): handed to the stack, a packet
 *   whose source is now a node address (SNAT, or a reply's VIP) would be dropped as a
 *   martian by the input route check. A destination that is local goes up the stack.
 * Egress (external interfaces): replies of flows that did not pass an ingress hook on
 * their way back (a backend in the node's own network namespace) are translated back.
 *
 * Why LRU flow maps and not the kernel's conntrack through the bpf_ct kfuncs: no netfilter
 * involvement at all (the "netfilter bypassed"), nothing to load (nf_conntrack,
 * nf_nat), and kernels from 5.x instead of 6.x (bpf_ct_set_nat_info is 6.3). The cost:
 * flows end by LRU eviction, not by TCP state; map sizes are configurable.
 *
 * Minimum kernels: clsact + direct-action 4.5, LRU maps 4.10, LPM trie 4.11, TCX links 6.6
 * (the loader falls back to netlink filters before that).
 */
#include "maps.h"

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/icmpv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* A packet that is not ours goes on unchanged: TC_ACT_UNSPEC is TCX_NEXT, so another
 * program attached after ours (a CNI's, or our next layout during a swap) still sees it,
 * and for a netlink filter it means "no verdict, continue". TC_ACT_OK would end the
 * chain. */
#define TC_NOT_OURS TC_ACT_UNSPEC

#define ETH_LEN 14
#define IP4_SADDR_OFF (ETH_LEN + 12)
#define IP4_CSUM_OFF (ETH_LEN + 10)
#define IP6_SADDR_OFF (ETH_LEN + 8)
#define SNAT_TRIES 8

/* linux/icmp.h pulls in libc headers, so the ICMPv4 header is spelled out here. */
#define ICMP_DEST_UNREACH 3
#define ICMP_PORT_UNREACH 3
struct icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be32 unused;
};

/* A parsed packet: where things are, and its flow as seen on the wire. */
struct packet {
	struct flow_key flow;
	__u32 l4_off;
	__u32 csum_off; /* of the L4 checksum */
	__u8 v6;
	__u8 tcp_flags;
};

static __always_inline int parse_l4(struct __sk_buff *skb, struct packet *p)
{
	__be16 ports[2];

	if (p->flow.proto == IPPROTO_TCP)
		p->csum_off = p->l4_off + offsetof(struct tcphdr, check);
	else if (p->flow.proto == IPPROTO_UDP)
		p->csum_off = p->l4_off + offsetof(struct udphdr, check);
	else
		return -1;
	if (bpf_skb_load_bytes(skb, p->l4_off, ports, sizeof(ports)) < 0)
		return -1;
	p->flow.sport = ports[0];
	p->flow.dport = ports[1];
	if (p->flow.proto == IPPROTO_TCP &&
	    bpf_skb_load_bytes(skb, p->l4_off + 13, &p->tcp_flags, 1) < 0)
		return -1;
	return 0;
}

/* Parses Ethernet + IPv4/IPv6 (no extension headers) + TCP/UDP; -1 for anything else. */
static __always_inline int parse(struct __sk_buff *skb, struct packet *p)
{
	__builtin_memset(p, 0, sizeof(*p));
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, ETH_LEN, &ip, sizeof(ip)) < 0)
			return -1;
		if (ip.ihl < 5 || (ip.frag_off & bpf_htons(0x3fff)))
			return -1; /* fragments are not translated */
		addr_set_v4(p->flow.saddr, ip.saddr);
		addr_set_v4(p->flow.daddr, ip.daddr);
		p->flow.proto = ip.protocol;
		p->l4_off = ETH_LEN + ip.ihl * 4;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, ETH_LEN, &ip6, sizeof(ip6)) < 0)
			return -1;
		__builtin_memcpy(p->flow.saddr, &ip6.saddr, 16);
		__builtin_memcpy(p->flow.daddr, &ip6.daddr, 16);
		p->flow.proto = ip6.nexthdr;
		p->l4_off = ETH_LEN + sizeof(ip6);
		p->v6 = 1;
	} else {
		return -1;
	}
	return parse_l4(skb, p);
}

static __always_inline __u64 l4_csum_flags(const struct packet *p, __u64 size)
{
	return size | (p->flow.proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0);
}

/* Rewrites one address (source when `dst` is 0), fixing the L3 and L4 checksums. */
static __always_inline int set_addr(struct __sk_buff *skb, const struct packet *p, int dst,
				    const __u8 *old, const __u8 *new)
{
	if (!p->v6) {
		__be32 o = addr_v4(old), n = addr_v4(new);
		__u32 off = IP4_SADDR_OFF + (dst ? 4 : 0);

		if (o == n)
			return 0;
		if (bpf_l4_csum_replace(skb, p->csum_off, o, n, l4_csum_flags(p, BPF_F_PSEUDO_HDR | 4)))
			return -1;
		if (bpf_l3_csum_replace(skb, IP4_CSUM_OFF, o, n, 4))
			return -1;
		return bpf_skb_store_bytes(skb, off, &n, 4, 0);
	} else {
		__be32 o6[4], n6[4];
		__s64 diff;

		if (addr_eq(old, new))
			return 0;
		__builtin_memcpy(o6, old, 16);
		__builtin_memcpy(n6, new, 16);
		diff = bpf_csum_diff(o6, 16, n6, 16, 0);
		if (diff < 0)
			return -1;
		if (bpf_l4_csum_replace(skb, p->csum_off, 0, diff,
					l4_csum_flags(p, BPF_F_PSEUDO_HDR)))
			return -1;
		return bpf_skb_store_bytes(skb, IP6_SADDR_OFF + (dst ? 16 : 0), n6, 16, 0);
	}
}

static __always_inline int set_port(struct __sk_buff *skb, const struct packet *p, int dst,
				    __be16 old, __be16 new)
{
	if (old == new)
		return 0;
	if (bpf_l4_csum_replace(skb, p->csum_off, old, new, l4_csum_flags(p, 2)))
		return -1;
	return bpf_skb_store_bytes(skb, p->l4_off + (dst ? 2 : 0), &new, 2, 0);
}

/* Applies a flow rewrite to the packet. */
static __always_inline int rewrite(struct __sk_buff *skb, const struct packet *p,
				   const struct flow_nat *n)
{
	if (set_addr(skb, p, 0, p->flow.saddr, n->saddr) ||
	    set_addr(skb, p, 1, p->flow.daddr, n->daddr) ||
	    set_port(skb, p, 0, p->flow.sport, n->sport) ||
	    set_port(skb, p, 1, p->flow.dport, n->dport))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

static __always_inline int in_source_ranges(const struct svc_value *svc, const __u8 *client)
{
	struct src_range_key k = { .prefixlen = 32 + 128 };
	__be32 id = bpf_htonl(svc->id);

	__builtin_memcpy(k.data, &id, 4);
	__builtin_memcpy(k.data + 4, client, 16);
	return bpf_map_lookup_elem(&sy_src_ranges, &k) != NULL;
}

static __always_inline __u16 csum_fold(__u64 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

/* Turns a TCP segment to a service into the RST answering it, sent back out. */
static __always_inline int reject_tcp(struct __sk_buff *skb, const struct packet *p)
{
	struct tcphdr th;
	__u32 seq, ack, len_l3, payload;
	__u64 sum;

	if (p->tcp_flags & 0x04) /* never answer a RST */
		return TC_ACT_SHOT;
	if (bpf_skb_load_bytes(skb, p->l4_off, &th, sizeof(th)) < 0)
		return TC_ACT_SHOT;
	len_l3 = skb->len - ETH_LEN;
	payload = skb->len - p->l4_off - th.doff * 4;
	seq = th.ack ? bpf_ntohl(th.ack_seq) : 0;
	ack = bpf_ntohl(th.seq) + payload + th.syn + th.fin;
	__builtin_memset(&th, 0, sizeof(th));
	th.source = p->flow.dport;
	th.dest = p->flow.sport;
	th.seq = bpf_htonl(seq);
	th.ack_seq = bpf_htonl(ack);
	th.doff = 5;
	th.rst = 1;
	th.ack = 1;
	(void)len_l3;

	if (!p->v6) {
		struct iphdr ip = { .version = 4, .ihl = 5, .ttl = 64, .protocol = IPPROTO_TCP };
		__be32 pseudo[3];

		ip.tot_len = bpf_htons(sizeof(ip) + sizeof(th));
		ip.saddr = addr_v4(p->flow.daddr);
		ip.daddr = addr_v4(p->flow.saddr);
		ip.check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&ip, sizeof(ip), 0));
		pseudo[0] = ip.saddr;
		pseudo[1] = ip.daddr;
		pseudo[2] = bpf_htonl((IPPROTO_TCP << 16) | sizeof(th));
		sum = bpf_csum_diff(0, 0, pseudo, sizeof(pseudo), 0);
		th.check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&th, sizeof(th), sum));
		if (bpf_skb_change_tail(skb, ETH_LEN + sizeof(ip) + sizeof(th), 0) ||
		    bpf_skb_store_bytes(skb, ETH_LEN, &ip, sizeof(ip), 0) ||
		    bpf_skb_store_bytes(skb, ETH_LEN + sizeof(ip), &th, sizeof(th), 0))
			return TC_ACT_SHOT;
	} else {
		struct ipv6hdr ip6 = { .version = 6, .nexthdr = IPPROTO_TCP, .hop_limit = 64 };
		__be32 pseudo[10];

		ip6.payload_len = bpf_htons(sizeof(th));
		__builtin_memcpy(&ip6.saddr, p->flow.daddr, 16);
		__builtin_memcpy(&ip6.daddr, p->flow.saddr, 16);
		__builtin_memcpy(pseudo, p->flow.daddr, 16);
		__builtin_memcpy(pseudo + 4, p->flow.saddr, 16);
		pseudo[8] = bpf_htonl(sizeof(th));
		pseudo[9] = bpf_htonl(IPPROTO_TCP);
		sum = bpf_csum_diff(0, 0, pseudo, sizeof(pseudo), 0);
		th.check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&th, sizeof(th), sum));
		if (bpf_skb_change_tail(skb, ETH_LEN + sizeof(ip6) + sizeof(th), 0) ||
		    bpf_skb_store_bytes(skb, ETH_LEN, &ip6, sizeof(ip6), 0) ||
		    bpf_skb_store_bytes(skb, ETH_LEN + sizeof(ip6), &th, sizeof(th), 0))
			return TC_ACT_SHOT;
	}
	return 0;
}

/* Turns a UDP datagram (IPv4 header without options) into the ICMP port unreachable
 * answering it: a new IP + ICMP header in front of the original IP header + 8 bytes. */
static __always_inline int reject_udp4(struct __sk_buff *skb, const struct packet *p)
{
	struct iphdr ip = { .version = 4, .ihl = 5, .ttl = 64, .protocol = IPPROTO_ICMP };
	struct icmphdr icmp = { .type = ICMP_DEST_UNREACH, .code = ICMP_PORT_UNREACH };
	__u8 quoted[28];
	__u32 len = sizeof(ip) + sizeof(icmp) + sizeof(quoted);
	__u64 sum;

	if (p->l4_off != ETH_LEN + 20)
		return TC_ACT_SHOT;
	if (bpf_skb_load_bytes(skb, ETH_LEN, quoted, sizeof(quoted)) < 0)
		return TC_ACT_SHOT;
	if (bpf_skb_change_tail(skb, ETH_LEN + sizeof(quoted), 0) ||
	    bpf_skb_adjust_room(skb, sizeof(ip) + sizeof(icmp), BPF_ADJ_ROOM_MAC, 0))
		return TC_ACT_SHOT;
	ip.tot_len = bpf_htons(len);
	ip.saddr = addr_v4(p->flow.daddr);
	ip.daddr = addr_v4(p->flow.saddr);
	ip.check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&ip, sizeof(ip), 0));
	sum = bpf_csum_diff(0, 0, (__be32 *)quoted, sizeof(quoted), 0);
	icmp.checksum = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&icmp, sizeof(icmp), sum));
	if (bpf_skb_store_bytes(skb, ETH_LEN, &ip, sizeof(ip), 0) ||
	    bpf_skb_store_bytes(skb, ETH_LEN + sizeof(ip), &icmp, sizeof(icmp), 0) ||
	    bpf_skb_store_bytes(skb, ETH_LEN + sizeof(ip) + sizeof(icmp), quoted, sizeof(quoted), 0))
		return TC_ACT_SHOT;
	return 0;
}

/* The same for IPv6: ICMPv6 port unreachable quoting the IPv6 header + 8 bytes. */
static __always_inline int reject_udp6(struct __sk_buff *skb, const struct packet *p)
{
	struct ipv6hdr ip6 = { .version = 6, .nexthdr = IPPROTO_ICMPV6, .hop_limit = 64 };
	struct icmp6hdr icmp = { .icmp6_type = ICMPV6_DEST_UNREACH,
				 .icmp6_code = ICMPV6_PORT_UNREACH };
	__u8 quoted[48];
	__be32 pseudo[10];
	__u32 len = sizeof(icmp) + sizeof(quoted);
	__u64 sum;

	if (bpf_skb_load_bytes(skb, ETH_LEN, quoted, sizeof(quoted)) < 0)
		return TC_ACT_SHOT;
	if (bpf_skb_change_tail(skb, ETH_LEN + sizeof(quoted), 0) ||
	    bpf_skb_adjust_room(skb, sizeof(ip6) + sizeof(icmp), BPF_ADJ_ROOM_MAC, 0))
		return TC_ACT_SHOT;
	ip6.payload_len = bpf_htons(len);
	__builtin_memcpy(&ip6.saddr, p->flow.daddr, 16);
	__builtin_memcpy(&ip6.daddr, p->flow.saddr, 16);
	__builtin_memcpy(pseudo, p->flow.daddr, 16);
	__builtin_memcpy(pseudo + 4, p->flow.saddr, 16);
	pseudo[8] = bpf_htonl(len);
	pseudo[9] = bpf_htonl(IPPROTO_ICMPV6);
	sum = bpf_csum_diff(0, 0, pseudo, sizeof(pseudo), 0);
	sum = bpf_csum_diff(0, 0, (__be32 *)quoted, sizeof(quoted), sum);
	icmp.icmp6_cksum = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&icmp, sizeof(icmp), sum));
	if (bpf_skb_store_bytes(skb, ETH_LEN, &ip6, sizeof(ip6), 0) ||
	    bpf_skb_store_bytes(skb, ETH_LEN + sizeof(ip6), &icmp, sizeof(icmp), 0) ||
	    bpf_skb_store_bytes(skb, ETH_LEN + sizeof(ip6) + sizeof(icmp), quoted, sizeof(quoted), 0))
		return TC_ACT_SHOT;
	return 0;
}

/* Answers a packet for a Reject entry and sends the answer back out the interface. */
static __always_inline int reject(struct __sk_buff *skb, const struct packet *p)
{
	__u8 macs[12], swapped[12];
	int err;

	if (bpf_skb_load_bytes(skb, 0, macs, sizeof(macs)) < 0)
		return TC_ACT_SHOT;
	if (p->flow.proto == IPPROTO_TCP)
		err = reject_tcp(skb, p);
	else if (p->v6)
		err = reject_udp6(skb, p);
	else
		err = reject_udp4(skb, p);
	if (err)
		return TC_ACT_SHOT;
	__builtin_memcpy(swapped, macs + 6, 6);
	__builtin_memcpy(swapped + 6, macs, 6);
	if (bpf_skb_store_bytes(skb, 0, swapped, sizeof(swapped), 0))
		return TC_ACT_SHOT;
	return bpf_redirect(skb->ifindex, 0);
}

/* Records the flow's two directions; for masquerade, finds a free SNAT port. Returns -1
 * when no port was free. */
static __always_inline int flow_create(const struct packet *p, struct flow_nat *fwd,
				       const struct svc_value *svc)
{
	struct flow_key rk = { .proto = p->flow.proto };
	struct flow_nat rv = { .sport = p->flow.dport, .dport = p->flow.sport };
	int i;

	__builtin_memcpy(rv.saddr, p->flow.daddr, 16);
	__builtin_memcpy(rv.daddr, p->flow.saddr, 16);
	__builtin_memcpy(rk.saddr, fwd->daddr, 16);
	__builtin_memcpy(rk.daddr, fwd->saddr, 16);
	rk.sport = fwd->dport;
#pragma unroll
	for (i = 0; i < SNAT_TRIES; i++) {
		rk.dport = fwd->sport;
		if (bpf_map_update_elem(&sy_nat_rev, &rk, &rv, BPF_NOEXIST) == 0)
			goto recorded;
		if (!(svc->flags & SVC_F_MASQUERADE))
			break; /* the client's own tuple: the old entry is this flow's */
		/* Another client holds this port towards this backend: try another. */
		fwd->sport = bpf_htons(32768 + (bpf_get_prandom_u32() % 28232));
	}
	if (svc->flags & SVC_F_MASQUERADE)
		return -1;
	bpf_map_update_elem(&sy_nat_rev, &rk, &rv, BPF_ANY);
recorded:
	return bpf_map_update_elem(&sy_nat_fwd, &p->flow, fwd, BPF_ANY) ? -1 : 0;
}

/* Sends a packet rewritten to flow `n` out of the device its route uses (see the top). */
static __always_inline int forward_out(struct __sk_buff *skb, const struct packet *p,
				       const struct flow_nat *n)
{
	struct bpf_fib_lookup fib = {};
	long ret;

	fib.ifindex = skb->ingress_ifindex;
	fib.l4_protocol = p->flow.proto;
	fib.sport = n->sport;
	fib.dport = n->dport;
	fib.tot_len = skb->len - ETH_LEN;
	if (!p->v6) {
		fib.family = 2; /* AF_INET */
		fib.ipv4_src = addr_v4(n->saddr);
		fib.ipv4_dst = addr_v4(n->daddr);
	} else {
		fib.family = 10; /* AF_INET6 */
		__builtin_memcpy(fib.ipv6_src, n->saddr, 16);
		__builtin_memcpy(fib.ipv6_dst, n->daddr, 16);
	}
	ret = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (ret == BPF_FIB_LKUP_RET_SUCCESS || ret == BPF_FIB_LKUP_RET_NO_NEIGH)
		return bpf_redirect_neigh(fib.ifindex, 0, 0, 0);
	return TC_ACT_OK;
}

/* Rewrites an ingress packet to flow `n` and sends it on. */
static __always_inline int translate_in(struct __sk_buff *skb, const struct packet *p,
					const struct flow_nat *n)
{
	if (rewrite(skb, p, n) != TC_ACT_OK)
		return TC_ACT_SHOT;
	return forward_out(skb, p, n);
}

/* A TCP SYN opens a new connection: an old flow with the same tuple (a reused client
 * port) is over, and the service is looked up again. */
static __always_inline int is_syn(const struct packet *p)
{
	return p->flow.proto == IPPROTO_TCP && (p->tcp_flags & 0x12) == 0x02;
}

/* Deletes the reply-direction entry of a client flow about to be replaced. */
static __always_inline void forget_flow(const struct packet *p, const struct flow_nat *fwd)
{
	struct flow_key rk = { .sport = fwd->dport, .dport = fwd->sport, .proto = p->flow.proto };

	__builtin_memcpy(rk.saddr, fwd->daddr, 16);
	__builtin_memcpy(rk.daddr, fwd->saddr, 16);
	bpf_map_delete_elem(&sy_nat_rev, &rk);
}

/* A new packet to an external-scope service entry. */
static __always_inline int serve(struct __sk_buff *skb, const struct packet *p,
				 const struct svc_value *svc)
{
	struct flow_nat fwd = { .sport = p->flow.sport };
	struct backend_value *be;

	if ((svc->flags & SVC_F_SOURCE_RANGES) && !in_source_ranges(svc, p->flow.saddr))
		return TC_ACT_SHOT;
	if (svc->action == ACTION_DROP)
		return TC_ACT_SHOT;
	if (svc->action == ACTION_REJECT)
		return reject(skb, p);
	be = pick_backend(svc, p->flow.saddr, SCOPE_EXTERNAL);
	if (!be)
		return reject(skb, p);
	if (addr_is_v4(be->addr) == p->v6)
		return TC_ACT_SHOT;
	__builtin_memcpy(fwd.daddr, be->addr, 16);
	fwd.dport = be->port;
	__builtin_memcpy(fwd.saddr, p->flow.saddr, 16);
	if (svc->flags & SVC_F_MASQUERADE) {
		__u32 slot = p->v6 ? CONFIG_SNAT_V6 : CONFIG_SNAT_V4;
		struct config_value *c = bpf_map_lookup_elem(&sy_config, &slot);

		if (!c || !c->set)
			return TC_ACT_SHOT;
		__builtin_memcpy(fwd.saddr, c->addr, 16);
	}
	if (flow_create(p, &fwd, svc))
		return TC_ACT_SHOT;
	return translate_in(skb, p, &fwd);
}

SEC("classifier")
int sy_tc_ingress(struct __sk_buff *skb)
{
	struct svc_key k = { .scope = SCOPE_EXTERNAL };
	struct flow_nat *nat;
	struct svc_value *svc;
	struct packet p;

	if (parse(skb, &p))
		return TC_NOT_OURS;
	nat = bpf_map_lookup_elem(&sy_nat_rev, &p.flow);
	if (nat) {
		struct flow_nat copy = *nat;

		return translate_in(skb, &p, &copy);
	}
	nat = bpf_map_lookup_elem(&sy_nat_fwd, &p.flow);
	if (nat && !is_syn(&p)) {
		struct flow_nat copy = *nat;

		return translate_in(skb, &p, &copy);
	}
	if (nat)
		forget_flow(&p, nat);
	__builtin_memcpy(k.addr, p.flow.daddr, 16);
	k.port = p.flow.dport;
	k.proto = p.flow.proto;
	svc = bpf_map_lookup_elem(&sy_services, &k);
	if (!svc)
		return TC_NOT_OURS;
	return serve(skb, &p, svc);
}

SEC("classifier")
int sy_tc_egress(struct __sk_buff *skb)
{
	struct flow_nat *nat;
	struct packet p;

	if (parse(skb, &p))
		return TC_NOT_OURS;
	nat = bpf_map_lookup_elem(&sy_nat_rev, &p.flow);
	if (nat) {
		struct flow_nat copy = *nat;

		return rewrite(skb, &p, &copy);
	}
	return TC_NOT_OURS;
}
