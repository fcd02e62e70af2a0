/*
 * Data connections between ranks. Internal to libfabricx/.
 *
 * A connection carries data one way: the rank that connected sends on it (comm->send_conns),
 * the rank that accepted receives (comm->recv_conns); a two-rank communicator has one
 * connection that both ranks use both ways. Every connection starts with a hello naming the
 * communicator and the two ranks, authenticated under the job secret; an acceptor drops one
 * whose hello does not verify.
 *
 * Init connects each rank to its ring neighbours. Every other connection is made on demand,
 * when the executor starts a plan with a lane to a peer that has none yet (fx_exec.c): the
 * sender connects without blocking (fx_conn_open, called again each progress round while it
 * returns FX_INPROGRESS), and the receiver takes the connection from its listeners during its
 * progress rounds (fx_conn_accept). So a rank never opens a connection to a peer it does not
 * send to.
 */
#ifndef FX_CONN_H
#define FX_CONN_H

#include <stdbool.h>
#include <stddef.h>

#include "fx_comm.h"

/*
 * Connects to the ring neighbours at init: sends go to the right neighbour, receives come from
 * the left one. Blocks up to FX_TIMEOUT_MS; err says which neighbour never connected.
 */
fx_status fx_conn_connect_ring(struct fx_comm *comm, char *err, size_t errlen);

/*
 * Advances the connection to peer for this rank's sends: FX_OK once comm->send_conns[peer] is
 * set, FX_INPROGRESS while it is being made (call again), or the transport's error
 * (FX_ERR_CONNECTION: refused or unreachable). Never blocks. Call with the lock held.
 */
fx_status fx_conn_open(struct fx_comm *comm, int peer);

/* Takes the data connections waiting on every listener into comm->recv_conns; true when it
 * took any. Never blocks. Call with the lock held. */
bool fx_conn_accept(struct fx_comm *comm);

/* Closes every data connection, those still being made included (the lock held, or during destroy).
 */
void fx_conn_close_all(struct fx_comm *comm);

#endif /* FX_CONN_H */
