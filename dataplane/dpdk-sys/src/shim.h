/*
 * slipstream dpdk-sys shim: exported wrappers for DPDK's static inline functions and macros,
 * which bindgen cannot bind. The first eight have exactly the names and signatures of
 * capsule-ffi's shim (so code written against capsule-ffi's surface builds against ours);
 * the rest follow the same `_rte_<function>` naming.
 */
#ifndef SLIPSTREAM_DPDK_SHIM_H
#define SLIPSTREAM_DPDK_SHIM_H

#include <stdint.h>

struct rte_mbuf;
struct rte_mempool;
struct rte_ring;

/* ---- capsule-ffi compatible ---------------------------------------------------------- */

/** rte_errno of the calling thread. */
int _rte_errno(void);

/** NUMA socket of an lcore (rte_lcore_to_socket_id). */
unsigned _rte_lcore_to_socket_id(unsigned lcore_id);

/** One mbuf from a pool, reset; NULL when the pool is empty. */
struct rte_mbuf *_rte_pktmbuf_alloc(struct rte_mempool *mp);

/** Frees a packet (every segment) back to its pool. */
void _rte_pktmbuf_free(struct rte_mbuf *m);

/** `count` reset mbufs, all or none: 0 on success, a negative errno otherwise. */
int _rte_pktmbuf_alloc_bulk(struct rte_mempool *pool, struct rte_mbuf **mbufs, unsigned count);

/** Puts raw objects back into a mempool (through the calling lcore's cache). */
void _rte_mempool_put_bulk(struct rte_mempool *mp, void *const *obj_table, unsigned int n);

/** Receives up to nb_pkts packets from a queue. */
uint16_t _rte_eth_rx_burst(uint16_t port_id, uint16_t queue_id, struct rte_mbuf **rx_pkts,
                           const uint16_t nb_pkts);

/** Hands up to nb_pkts packets to a queue; returns how many it took. */
uint16_t _rte_eth_tx_burst(uint16_t port_id, uint16_t queue_id, struct rte_mbuf **tx_pkts,
                           uint16_t nb_pkts);

/* ---- slipstream additions, same naming ----------------------------------------------- */

/** The calling thread's lcore id (LCORE_ID_ANY for an unregistered thread). */
unsigned _rte_lcore_id(void);

/** Start of the packet data (rte_pktmbuf_mtod). */
void *_rte_pktmbuf_mtod(struct rte_mbuf *m);

/** Bytes free in front of the data (rte_pktmbuf_headroom). */
uint16_t _rte_pktmbuf_headroom(const struct rte_mbuf *m);

/** Bytes free after the data of the last segment (rte_pktmbuf_tailroom). */
uint16_t _rte_pktmbuf_tailroom(const struct rte_mbuf *m);

/** Packet bytes [off, off+len) as one contiguous range: a pointer into the mbuf when they
 *  lie in one segment, else into `buf` after copying them there; NULL when the packet is
 *  shorter (rte_pktmbuf_read). */
const void *_rte_pktmbuf_read(const struct rte_mbuf *m, uint32_t off, uint32_t len, void *buf);

/** Data room of the mbufs of a packet pool (rte_pktmbuf_data_room_size). */
uint16_t _rte_pktmbuf_data_room_size(struct rte_mempool *mp);

/** Private area size of the mbufs of a packet pool (rte_pktmbuf_priv_size). */
uint16_t _rte_pktmbuf_priv_size(struct rte_mempool *mp);

/** `n` raw objects from a mempool, all or none: 0 on success, a negative errno otherwise. */
int _rte_mempool_get_bulk(struct rte_mempool *mp, void **obj_table, unsigned int n);

/** Objects currently held in the calling lcore's cache of a mempool (0 without one). */
unsigned _rte_mempool_cache_count(struct rte_mempool *mp);

/** Elements in a mempool in all (its `size`). */
unsigned _rte_mempool_size(const struct rte_mempool *mp);

/** Enqueues up to n objects (rte_ring_enqueue_burst); *free_space may be NULL. */
unsigned _rte_ring_enqueue_burst(struct rte_ring *r, void *const *obj_table, unsigned n,
                                 unsigned *free_space);

/** Dequeues up to n objects (rte_ring_dequeue_burst); *available may be NULL. */
unsigned _rte_ring_dequeue_burst(struct rte_ring *r, void **obj_table, unsigned n,
                                 unsigned *available);

/** Objects in a ring (rte_ring_count). */
unsigned _rte_ring_count(const struct rte_ring *r);

#endif
