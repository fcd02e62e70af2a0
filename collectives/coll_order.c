/* Topology-aware ring order (see coll_plan.h). */
#include "coll_plan.h"

void fx_coll_ring_order(const int *host_of, const int64_t *local, int n, int *order)
{
    int k = 0;

    /* For each rank that is the lowest of its host, append that host's ranks in (local, rank)
     * order by insertion: O(n^2), run once per communicator. */
    for (int r = 0; r < n; r++) {
        bool first = true;
        int start  = k;

        for (int q = 0; q < r && first; q++) {
            first = host_of[q] != host_of[r];
        }
        if (!first) {
            continue;
        }
        for (int q = r; q < n; q++) {
            int at = k;

            if (host_of[q] != host_of[r]) {
                continue;
            }
            k++;
            while (local != NULL && at > start && local[order[at - 1]] > local[q]) {
                order[at] = order[at - 1];
                at--;
            }
            order[at] = q;
        }
    }
}

void fx_coll_ring_order_by_host(const int *host_of, int n, int *order)
{
    fx_coll_ring_order(host_of, NULL, n, order);
}
