/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Shared layout between steer.bpf.c and the Rust loader (xdp/src/lib.rs, `RawRule`).
 * Any change here must be mirrored there; both sides assert the struct sizes.
 */
#ifndef SLIPSTREAM_STEER_H
#define SLIPSTREAM_STEER_H

#include <linux/types.h>

/* Rules one bank holds. The rules map holds STEER_BANKS banks of this many. */
#define STEER_MAX_RULES 64
/* Two banks: user space fills the inactive bank, then flips `config` in one 32-bit write. */
#define STEER_BANKS 2
/* XSKMAP entries: the highest RX queue index that can be steered, plus one. */
#define STEER_MAX_QUEUES 256

/*
 * One steering rule. A packet matches when every field matches:
 *   family   4 or 6 (any other value never matches: an unused slot)
 *   proto    0 = any L4 protocol, else the IPv4 protocol / IPv6 next header (6 TCP, 17 UDP)
 *   addr     destination prefix, network byte order, host bits already cleared;
 *            IPv4 uses addr[0] only (addr[1..3] and mask[1..3] are 0)
 *   mask     prefix mask, network byte order (user space derives it from a prefix length)
 *   port_lo  destination port range, host byte order, inclusive;
 *   port_hi  lo == hi == 0 means any port (and then packets without ports match too);
 *            any other range matches only TCP/UDP packets that carry ports
 */
struct steer_rule {
	__u32 addr[4];
	__u32 mask[4];
	__u16 port_lo;
	__u16 port_hi;
	__u8 family;
	__u8 proto;
	__u8 pad[2];
};

/*
 * config[0]: bits 0..15 = number of active rules, bit 16 = active bank (0 or 1).
 * One 32-bit word so that a rule-set flip is a single store.
 */
#define STEER_CONFIG_NR_MASK 0xffffu
#define STEER_CONFIG_BANK_SHIFT 16

/* Indices into the `stats` PERCPU_ARRAY. */
enum steer_stat {
	/* no rule matched (or not IPv4/IPv6): XDP_PASS to the kernel */
	STEER_STAT_PASSED = 0,
	/* a rule matched but the RX queue has no AF_XDP socket: XDP_PASS by redirect fallback */
	STEER_STAT_NO_XSK = 1,
	STEER_STAT_MAX = 2,
};

#endif
