/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Layout shared between netbench.bpf.c and the Rust side (src/bpf.rs). Any change here must
 * be mirrored there; both sides check the struct size.
 */
#ifndef NETBENCH_H
#define NETBENCH_H

#include <linux/types.h>

/* Generator: UDP source port = sport_base + (per-CPU sequence % flows); flows <= 1 leaves
 * the template's port alone. Host byte order. Only frames of a test run on `ifindex` are
 * generated; the program also sits on the namespace's loopback (see gen.rs) and passes
 * everything there.
 *
 * memcached mode (kv_keys > 0): the template is a memcached UDP `set` of key
 * "kvload:<25 digits>" (kv-load's key space) at NB_KV_CMD_OFF; per frame the program picks
 * get or set (kv_get_permille of 1000 are gets) and a key in 0..kv_keys from a hash of the
 * sequence, writes the key's last five digits, and for a get rewrites the command, ends it
 * after the key and cuts the frame to NB_KV_GET_LEN bytes (kv_shrink fewer). The IPv4 total
 * length and header checksum and the UDP length of both shapes are precomputed (network
 * byte order); the UDP checksum is 0 ("none"). */
struct nb_gen_cfg {
	__u16 sport_base;
	__u16 pad;
	__u32 flows;
	__u32 ifindex;
	__u32 kv_keys;
	__u32 kv_get_permille;
	__u32 kv_shrink;
	__u16 ip_len_get;
	__u16 ip_csum_get;
	__u16 udp_len_get;
	__u16 ip_len_set;
	__u16 ip_csum_set;
	__u16 udp_len_set;
};

/* memcached mode layout: Ethernet 14 + IPv4 20 + UDP 8 + memcached frame header 8. */
#define NB_KV_CMD_OFF 50
#define NB_KV_KEY_END (NB_KV_CMD_OFF + 4 + 32)
#define NB_KV_DIGITS_OFF (NB_KV_KEY_END - 5)
#define NB_KV_GET_LEN (NB_KV_KEY_END + 2)
#define NB_KV_MAX_KEYS 100000

/* Keys of the `counts` PERCPU array. */
#define NB_COUNT_HIT 0  /* nb_drop: every frame; nb_sink: UDP frames counted and dropped */
#define NB_COUNT_PASS 1 /* nb_sink: frames passed to the kernel */
#define NB_COUNT_MAX 2

#endif
