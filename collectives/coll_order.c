/* Topology-aware ring order (see coll_plan.h). */
#include "coll_plan.h"

void fx_coll_ring_order_by_host(const int *host_of, int n, int *order)
{
    int k = 0;

    /* For each rank that is the lowest of its host, append that host's ranks in rank order:
     * O(n^2), run once per communicator. */
    for (int r = 0; r < n; r++) {
        bool first = true;

        for (int q = 0; q < r && first; q++) {
            first = host_of[q] != host_of[r];
        }
        if (!first) {
            continue;
        }
        for (int q = r; q < n; q++) {
            if (host_of[q] == host_of[r]) {
                order[k++] = q;
            }
        }
    }
}
