// SPDX-License-Identifier: Apache-2.0
/*
 * slipstream XDP steering program.
 *
 * Parses Ethernet (+ one 802.1Q / 802.1ad tag), IPv4 (honouring IHL; non-first fragments
 * carry no ports) or IPv6 (fixed header only: the next-header field is taken as the L4
 * protocol), and the TCP/UDP destination port. The first of up to STEER_MAX_RULES rules
 * (see steer.h) that matches redirects the frame to the AF_XDP socket registered for the
 * frame's RX queue in `xsks`; a queue without a socket falls back to XDP_PASS, so the
 * kernel still gets the packet. Everything else (ARP, ICMP, SSH, ...) is XDP_PASS.
 *
 * Counters are PERCPU (no atomics on the hot path): `hits` per rule slot (both banks),
 * `stats` for passed packets and matched-but-no-socket fallbacks.
 *
 * The program uses no GPL-only helpers, so it is licensed like the rest of the workspace.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "steer.h"

_Static_assert(sizeof(struct steer_rule) == 40, "steer_rule layout is shared with Rust");

/* linux/if_vlan.h is not UAPI; this is the 4-byte tag that follows the MAC addresses. */
struct vlan_hdr {
	__be16 tci;
	__be16 encapsulated_proto;
};

#define IP_FRAG_OFFSET_MASK 0x1fff

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, STEER_BANKS * STEER_MAX_RULES);
	__type(key, __u32);
	__type(value, struct steer_rule);
} rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STEER_BANKS * STEER_MAX_RULES);
	__type(key, __u32);
	__type(value, __u64);
} hits SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STEER_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, STEER_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

/* What the rules look at; dst[1..3] stay 0 for IPv4. */
struct flow {
	__u32 dst[4];
	__u16 dport;
	__u8 family;
	__u8 proto;
	__u8 has_ports;
};

static __always_inline void count(void *map, __u32 key)
{
	__u64 *c = bpf_map_lookup_elem(map, &key);

	if (c)
		*c += 1;
}

/* Returns 0 when `f` describes an IPv4/IPv6 packet, -1 for anything else. */
static __always_inline int parse(struct xdp_md *ctx, struct flow *f)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	void *l3, *l4;
	__be16 ethertype;

	if ((void *)(eth + 1) > end)
		return -1;
	ethertype = eth->h_proto;
	l3 = eth + 1;

	if (ethertype == bpf_htons(ETH_P_8021Q) || ethertype == bpf_htons(ETH_P_8021AD)) {
		struct vlan_hdr *vlan = l3;

		if ((void *)(vlan + 1) > end)
			return -1;
		ethertype = vlan->encapsulated_proto;
		l3 = vlan + 1;
	}

	if (ethertype == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = l3;
		__u32 ihl;

		if ((void *)(ip + 1) > end)
			return -1;
		ihl = ip->ihl * 4;
		if (ip->version != 4 || ihl < sizeof(*ip))
			return -1;
		f->family = 4;
		f->proto = ip->protocol;
		f->dst[0] = ip->daddr;
		/* A non-first fragment has no L4 header: only port-less rules can match it. */
		if (ip->frag_off & bpf_htons(IP_FRAG_OFFSET_MASK))
			return 0;
		l4 = l3 + ihl;
	} else if (ethertype == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;

		if ((void *)(ip6 + 1) > end)
			return -1;
		if (ip6->version != 6)
			return -1;
		f->family = 6;
		f->proto = ip6->nexthdr;
		f->dst[0] = ip6->daddr.in6_u.u6_addr32[0];
		f->dst[1] = ip6->daddr.in6_u.u6_addr32[1];
		f->dst[2] = ip6->daddr.in6_u.u6_addr32[2];
		f->dst[3] = ip6->daddr.in6_u.u6_addr32[3];
		l4 = ip6 + 1;
	} else {
		return -1;
	}

	if (f->proto == IPPROTO_UDP || f->proto == IPPROTO_TCP) {
		/* UDP and TCP both start with source port, destination port. */
		__be16 *ports = l4;

		if ((void *)(ports + 2) > end)
			return 0; /* truncated: no ports */
		f->dport = bpf_ntohs(ports[1]);
		f->has_ports = 1;
	}
	return 0;
}

static __always_inline int matches(const struct steer_rule *r, const struct flow *f)
{
	if (r->family != f->family)
		return 0;
	if (r->proto && r->proto != f->proto)
		return 0;
	if ((f->dst[0] & r->mask[0]) != r->addr[0] || (f->dst[1] & r->mask[1]) != r->addr[1] ||
	    (f->dst[2] & r->mask[2]) != r->addr[2] || (f->dst[3] & r->mask[3]) != r->addr[3])
		return 0;
	if (r->port_lo || r->port_hi) {
		if (!f->has_ports || f->dport < r->port_lo || f->dport > r->port_hi)
			return 0;
	}
	return 1;
}

SEC("xdp")
int slipstream_xdp(struct xdp_md *ctx)
{
	struct flow f = {};
	__u32 zero = 0, active, nr, base, i;
	__u32 *cfg;

	if (parse(ctx, &f) < 0)
		goto pass;

	cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg)
		goto pass;
	active = *(volatile __u32 *)cfg;
	nr = active & STEER_CONFIG_NR_MASK;
	base = ((active >> STEER_CONFIG_BANK_SHIFT) & 1) * STEER_MAX_RULES;

	for (i = 0; i < STEER_MAX_RULES; i++) {
		__u32 key = base + i;
		struct steer_rule *r;
		long action;

		if (i >= nr)
			break;
		r = bpf_map_lookup_elem(&rules, &key);
		if (!r)
			break;
		if (!matches(r, &f))
			continue;
		count(&hits, key);
		action = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
		if (action != XDP_REDIRECT)
			count(&stats, STEER_STAT_NO_XSK);
		return action;
	}
pass:
	count(&stats, STEER_STAT_PASSED);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Apache-2.0";
