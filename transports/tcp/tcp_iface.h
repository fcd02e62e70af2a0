/*
 * Interface choice shared by the TCP transport and the bootstrap (socket utilities, not the
 * ops table): FX_SOCKET_IFNAME syntax and the default rules.
 */
#ifndef FX_TCP_IFACE_H
#define FX_TCP_IFACE_H

#include <stdbool.h>
#include <sys/socket.h>

#include "fabricx.h"

#define FX_TCP_IFNAME_LEN 16

/*
 * Lists up to `max` local addresses (IPv4 first, then IPv6; link-local IPv6 skipped) of the
 * interfaces that `spec` selects. spec: NULL or "" for the default (every interface that is up,
 * except loopback and docker-like/virtual ones, unless nothing else exists); comma-separated
 * name prefixes ("eth,ens"); "^" before the list to exclude those prefixes; "=" before the
 * list for exact names; or a CIDR ("10.0.0.0/8", "fd00::/64"). Ports are zero.
 * Returns FX_OK (*n may be 0 when nothing matches) or FX_ERR_INVALID_ARG for a malformed spec.
 */
fx_status fx_tcp_iface_list(const char *spec, struct sockaddr_storage *addrs,
                            char (*names)[FX_TCP_IFNAME_LEN], int max, int *n);

/* Does the interface name match the spec's name rules (no CIDR)? Exposed for tests. */
bool fx_tcp_iface_match(const char *spec, const char *name);

#endif /* FX_TCP_IFACE_H */
