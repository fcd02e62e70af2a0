/*
 * The executor: runs the plan of the operation at the head of the communicator's queue over
 * the transport, one operation at a time, in order (a run of point-to-point calls counts as
 * one). Non-blocking: fx_exec_progress moves
 * everything it can and returns; fx_exec_wait sleeps on the communicator's epoll set between
 * rounds. The progress thread drives operations nobody waits for.
 */
#ifndef FX_EXEC_H
#define FX_EXEC_H

#include "fx_comm.h"

/* Allocates the scratch buffers and starts the progress thread. */
fx_status fx_exec_init(struct fx_comm *comm, char *err, size_t errlen);
/* Stops the progress thread and frees everything (requests still queued are dropped). */
void fx_exec_fini(struct fx_comm *comm);

/*
 * Queues a validated call: a request with the call fields of `args` (coll through recv_count,
 * and root). Blocking: drives it to completion and returns its status, all under one hold of
 * the lock. Non-blocking: *out is the request (fx_test, fx_wait), which the progress thread
 * starts. FX_ERR_NO_MEMORY when no request object can be had. The caller holds no lock.
 */
fx_status fx_exec_call(struct fx_comm *comm, const struct fx_request *args, bool blocking,
                       struct fx_request **out);

/* fx_test and fx_wait: see fabricx.h. */
fx_status fx_exec_test(struct fx_request *req);
fx_status fx_exec_wait(struct fx_request *req, int timeout_ms);

/* One round of progress; call with the lock held. */
void fx_exec_progress(struct fx_comm *comm);
/* Milliseconds since an op of the running plan last moved (reads nothing but now_ms). */
int64_t fx_exec_idle_ms(struct fx_comm *comm, int64_t now_ms);

/* Fails the running and queued operations (from fx_comm_fail, lock held). */
void fx_exec_fail_all(struct fx_comm *comm, fx_status status);

/* Between fx_exec.c and fx_exec_wait.c (waiting and the progress thread). */

/* fx_exec_wait with the lock held. */
fx_status fx_exec_wait_locked(struct fx_request *req, int timeout_ms);

/* Reads the control plane and fails the communicator on a relayed abort; lock held. */
void fx_exec_drain_control(struct fx_comm *comm);
/* Once a second: link-statistics windows, the report to rank 0 and, there, the slow-link
 * verdict (fx_links.h); lock held. */
void fx_exec_links_tick(struct fx_comm *comm);
/* Builds the communicator's epoll set and starts the progress thread. */
fx_status fx_exec_wait_start(struct fx_comm *comm, char *err, size_t errlen);
/* Stops the progress thread and closes the epoll set and the wake-up eventfd. */
void fx_exec_wait_stop(struct fx_comm *comm);

#endif /* FX_EXEC_H */
