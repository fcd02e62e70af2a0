/*
 * Data connections between ranks. Internal to libfabricx/.
 *
 * A connection carries data one way: the rank that connected sends on it (comm->send_conns),
 * the rank that accepted receives (comm->recv_conns); a two-rank communicator has one
 * connection that both ranks use both ways. Every connection starts with a hello naming the
 * communicator and the two ranks, authenticated under the job secret; an acceptor drops one
 * whose hello does not verify.
 */
#ifndef FX_CONN_H
#define FX_CONN_H

#include <stddef.h>

#include "fx_comm.h"

/*
 * Connects to the ring neighbours at init: sends go to the right neighbour, receives come from
 * the left one. Blocks up to FX_TIMEOUT_MS; err says which neighbour never connected.
 */
fx_status fx_conn_connect_ring(struct fx_comm *comm, char *err, size_t errlen);

/* Closes every data connection (the lock held, or during destroy). */
void fx_conn_close_all(struct fx_comm *comm);

#endif /* FX_CONN_H */
