/*
 * Which transport carries the traffic between two ranks, decided from their bootstrap records
 * alone so that both ranks of a pair decide alike (DESIGN.md: "the transport is chosen per peer
 * pair"). Ranks of one host (equal host ids) use a transport that reaches only local processes
 * (shared memory) when both publish one; every other pair uses the first network transport of
 * this build's list that both publish. FX_TRANSPORT and FX_SHM_DISABLE act earlier, on what a
 * rank publishes.
 */
#ifndef FX_ROUTE_H
#define FX_ROUTE_H

#include <stdbool.h>
#include <stddef.h>

#include "fx_boot.h"
#include "transports/transport.h"

/* The transport for the pair (a, b), or NULL when they publish none in common; then why says
 * what each offers. Symmetric in a and b. */
const struct fx_transport_ops *fx_route_choose(const struct fx_boot_entry *a,
                                               const struct fx_boot_entry *b, char *why,
                                               size_t whylen);

/* The address e publishes for the named transport, or NULL. */
const struct fx_tp_addr *fx_route_addr(const struct fx_boot_entry *e, const char *tp);

/* True when the two records come from one host (shared memory can join them). */
bool fx_route_same_host(const struct fx_boot_entry *a, const struct fx_boot_entry *b);

#endif /* FX_ROUTE_H */
