/* Per-pair transport choice (fx_route.h). */
#include "fx_route.h"

#include <stdio.h>
#include <string.h>

const struct fx_tp_addr *fx_route_addr(const struct fx_boot_entry *e, const char *tp)
{
    for (int i = 0; i < e->naddrs && i < FX_BOOT_MAX_ADDRS; i++) {
        if (strcmp(e->addrs[i].tp, tp) == 0) {
            return &e->addrs[i].addr;
        }
    }
    return NULL;
}

bool fx_route_same_host(const struct fx_boot_entry *a, const struct fx_boot_entry *b)
{
    return memcmp(a->host_id, b->host_id, sizeof(a->host_id)) == 0;
}

static void offers(const struct fx_boot_entry *e, char *buf, size_t len)
{
    size_t used = 0;

    buf[0] = '\0';
    for (int i = 0; i < e->naddrs && i < FX_BOOT_MAX_ADDRS; i++) {
        int w = snprintf(buf + used, len - used, "%s%s", i ? "," : "", e->addrs[i].tp);

        used = w > 0 && (size_t)w < len - used ? used + (size_t)w : len - 1;
    }
}

const struct fx_transport_ops *fx_route_choose(const struct fx_boot_entry *a,
                                               const struct fx_boot_entry *b, char *why,
                                               size_t whylen)
{
    bool local = fx_route_same_host(a, b);
    char oa[64], ob[64];

    /* Two passes over the build's list: local-only transports first, for a pair of one host. */
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; fx_transports[i] != NULL; i++) {
            const struct fx_transport_ops *ops = fx_transports[i];
            bool local_only                    = (ops->caps & FX_TP_CAP_LOCAL_ONLY) != 0;

            if ((pass == 0) != local_only || (local_only && !local)) {
                continue;
            }
            if (fx_route_addr(a, ops->name) != NULL && fx_route_addr(b, ops->name) != NULL) {
                return ops;
            }
        }
    }
    offers(a, oa, sizeof(oa));
    offers(b, ob, sizeof(ob));
    snprintf(why, whylen,
             "no transport in common: rank %d (host %s) offers %s, rank %d (host %s) "
             "offers %s%s",
             a->rank, a->host, oa, b->rank, b->host, ob,
             local ? "" : " (shared memory reaches only ranks of one host)");
    return NULL;
}
