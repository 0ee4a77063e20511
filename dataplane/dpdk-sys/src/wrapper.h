/* What bindgen binds: the EAL, ethdev, mbuf, mempool, ring, lcore and errno APIs, plus the
 * shim's declarations. rte_config.h first, as DPDK's own build does (-include). */
#include <rte_config.h>
#include <rte_common.h>
#include <rte_dev.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_ring.h>
#include <rte_version.h>

#include "shim.h"
