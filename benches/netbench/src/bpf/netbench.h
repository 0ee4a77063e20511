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
 * everything there. */
struct nb_gen_cfg {
	__u16 sport_base;
	__u16 pad;
	__u32 flows;
	__u32 ifindex;
};

/* Keys of the `counts` PERCPU array. */
#define NB_COUNT_HIT 0  /* nb_drop: every frame; nb_sink: UDP frames counted and dropped */
#define NB_COUNT_PASS 1 /* nb_sink: frames passed to the kernel */
#define NB_COUNT_MAX 2

#endif
