// SPDX-License-Identifier: Apache-2.0
/*
 * netbench's XDP programs (one object, three programs; user space picks one).
 *
 *   nb_gen   The traffic generator's program, run by BPF_PROG_RUN with
 *            BPF_F_TEST_XDP_LIVE_FRAMES: rewrites the UDP source port of
 *            the template frame from a per-CPU counter (`gen_cfg`: base + seq % flows) and
 *            returns XDP_TX, which the kernel turns into a transmit out of the ingress
 *            interface given in the run's context. The UDP checksum of the template is 0
 *            ("none", IPv4), so rewriting the port needs no checksum update; the IPv4
 *            header is not touched. While a generator runs, the program is also attached
 *            (generic mode) to the loopback of its namespace, only so that it stays in the
 *            kernel's XDP dispatcher (see gen.rs); there, and for any frame not of a test
 *            run on the configured interface, it returns XDP_PASS.
 *   nb_drop  The ceiling: counts every frame (per-CPU) and drops it.
 *   nb_sink  The reply counter: counts and drops IPv4 UDP frames (optionally only those
 *            from one source port, `sink_cfg`), passes everything else (ARP, ICMP, IPv6
 *            neighbour discovery) so the peer's kernel keeps working.
 *
 * Counters are PERCPU arrays, summed by user space: no atomics on the hot path. No
 * GPL-only helpers are used, so the program is licensed like the rest of the workspace.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "netbench.h"

_Static_assert(sizeof(struct nb_gen_cfg) == 36, "nb_gen_cfg layout is shared with Rust");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nb_gen_cfg);
} gen_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} gen_seq SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} sink_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NB_COUNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

static __always_inline void count(__u32 key)
{
	__u64 *c = bpf_map_lookup_elem(&counts, &key);

	if (c)
		*c += 1;
}

/* The IPv4 UDP header of a frame without VLAN tag, or NULL. */
static __always_inline struct udphdr *udp4(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	struct udphdr *udp;

	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return NULL;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->version != 4 || ip->ihl < 5 ||
	    ip->protocol != IPPROTO_UDP)
		return NULL;
	udp = (void *)ip + ip->ihl * 4;
	if ((void *)(udp + 1) > end)
		return NULL;
	return udp;
}

/* memcached mode: turn the `set` template into this frame's get or set (see netbench.h). */
static __always_inline int kv_request(struct xdp_md *ctx, struct nb_gen_cfg *cfg, __u32 seq)
{
	__u8 *data = (void *)(long)ctx->data;
	__u8 *end = (void *)(long)ctx->data_end;
	struct iphdr *ip = (void *)(data + sizeof(struct ethhdr));
	struct udphdr *udp = (void *)(ip + 1);
	__u32 h = seq * 2654435761u;
	__u32 key = ((h >> 8) ^ (seq * 40503u)) % cfg->kv_keys;
	int get = ((h >> 16) % 1000) < cfg->kv_get_permille;
	int i;

	if (data + NB_KV_KEY_END + 2 > end)
		return XDP_ABORTED;
	for (i = 4; i >= 0; i--) {
		data[NB_KV_DIGITS_OFF + i] = '0' + key % 10;
		key /= 10;
	}
	if (get) {
		data[NB_KV_CMD_OFF] = 'g';
		data[NB_KV_KEY_END] = '\r';
		data[NB_KV_KEY_END + 1] = '\n';
		ip->tot_len = cfg->ip_len_get;
		ip->check = cfg->ip_csum_get;
		udp->len = cfg->udp_len_get;
		if (bpf_xdp_adjust_tail(ctx, -(int)cfg->kv_shrink))
			return XDP_ABORTED;
	} else {
		/* The page may hold a get from an earlier run: restore the set. */
		data[NB_KV_CMD_OFF] = 's';
		data[NB_KV_KEY_END] = ' ';
		data[NB_KV_KEY_END + 1] = '0';
		ip->tot_len = cfg->ip_len_set;
		ip->check = cfg->ip_csum_set;
		udp->len = cfg->udp_len_set;
	}
	return XDP_TX;
}

SEC("xdp")
int nb_gen(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct nb_gen_cfg *cfg = bpf_map_lookup_elem(&gen_cfg, &zero);
	__u32 *seq = bpf_map_lookup_elem(&gen_seq, &zero);
	struct udphdr *udp;
	__u32 s;

	if (!cfg || !seq)
		return XDP_ABORTED;
	if (ctx->ingress_ifindex != cfg->ifindex)
		return XDP_PASS;
	s = *seq;
	*seq = s + 1;
	if (cfg->flows > 1) {
		udp = udp4(ctx);
		if (!udp)
			return XDP_ABORTED;
		udp->source = bpf_htons(cfg->sport_base + s % cfg->flows);
	}
	if (cfg->kv_keys > 0 && cfg->kv_keys <= NB_KV_MAX_KEYS)
		return kv_request(ctx, cfg, s);
	return XDP_TX;
}

SEC("xdp")
int nb_drop(struct xdp_md *ctx)
{
	count(NB_COUNT_HIT);
	return XDP_DROP;
}

SEC("xdp")
int nb_sink(struct xdp_md *ctx)
{
	__u32 zero = 0;
	__u32 *sport = bpf_map_lookup_elem(&sink_cfg, &zero);
	struct udphdr *udp = udp4(ctx);

	if (!udp || (sport && *sport && udp->source != bpf_htons(*sport))) {
		count(NB_COUNT_PASS);
		return XDP_PASS;
	}
	count(NB_COUNT_HIT);
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "Apache-2.0";
