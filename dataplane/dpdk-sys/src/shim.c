/* See shim.h. Each wrapper is the static inline function (or macro) it is named after. */
#include <rte_config.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_ring.h>

#include "shim.h"

int _rte_errno(void) { return rte_errno; }

unsigned _rte_lcore_to_socket_id(unsigned lcore_id) { return rte_lcore_to_socket_id(lcore_id); }

struct rte_mbuf *_rte_pktmbuf_alloc(struct rte_mempool *mp) { return rte_pktmbuf_alloc(mp); }

void _rte_pktmbuf_free(struct rte_mbuf *m) { rte_pktmbuf_free(m); }

int _rte_pktmbuf_alloc_bulk(struct rte_mempool *pool, struct rte_mbuf **mbufs, unsigned count) {
    return rte_pktmbuf_alloc_bulk(pool, mbufs, count);
}

void _rte_mempool_put_bulk(struct rte_mempool *mp, void *const *obj_table, unsigned int n) {
    rte_mempool_put_bulk(mp, obj_table, n);
}

uint16_t _rte_eth_rx_burst(uint16_t port_id, uint16_t queue_id, struct rte_mbuf **rx_pkts,
                           const uint16_t nb_pkts) {
    return rte_eth_rx_burst(port_id, queue_id, rx_pkts, nb_pkts);
}

uint16_t _rte_eth_tx_burst(uint16_t port_id, uint16_t queue_id, struct rte_mbuf **tx_pkts,
                           uint16_t nb_pkts) {
    return rte_eth_tx_burst(port_id, queue_id, tx_pkts, nb_pkts);
}

unsigned _rte_lcore_id(void) { return rte_lcore_id(); }

void *_rte_pktmbuf_mtod(struct rte_mbuf *m) { return rte_pktmbuf_mtod(m, void *); }

uint16_t _rte_pktmbuf_headroom(const struct rte_mbuf *m) { return rte_pktmbuf_headroom(m); }

uint16_t _rte_pktmbuf_tailroom(const struct rte_mbuf *m) { return rte_pktmbuf_tailroom(m); }

const void *_rte_pktmbuf_read(const struct rte_mbuf *m, uint32_t off, uint32_t len, void *buf) {
    return rte_pktmbuf_read(m, off, len, buf);
}

uint16_t _rte_pktmbuf_data_room_size(struct rte_mempool *mp) {
    return rte_pktmbuf_data_room_size(mp);
}

uint16_t _rte_pktmbuf_priv_size(struct rte_mempool *mp) { return rte_pktmbuf_priv_size(mp); }

int _rte_mempool_get_bulk(struct rte_mempool *mp, void **obj_table, unsigned int n) {
    return rte_mempool_get_bulk(mp, obj_table, n);
}

unsigned _rte_mempool_cache_count(struct rte_mempool *mp) {
    struct rte_mempool_cache *c = rte_mempool_default_cache(mp, rte_lcore_id());
    return c == NULL ? 0 : c->len;
}

unsigned _rte_mempool_size(const struct rte_mempool *mp) { return mp->size; }

unsigned _rte_ring_enqueue_burst(struct rte_ring *r, void *const *obj_table, unsigned n,
                                 unsigned *free_space) {
    return rte_ring_enqueue_burst(r, obj_table, n, free_space);
}

unsigned _rte_ring_dequeue_burst(struct rte_ring *r, void **obj_table, unsigned n,
                                 unsigned *available) {
    return rte_ring_dequeue_burst(r, obj_table, n, available);
}

unsigned _rte_ring_count(const struct rte_ring *r) { return rte_ring_count(r); }
