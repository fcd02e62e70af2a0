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

/* Queues a validated request; the caller holds no lock. `background`: nobody is about to wait
 * for it, so the progress thread starts it. */
fx_status fx_exec_submit(struct fx_comm *comm, struct fx_request *req, bool background);
/* A request object from the communicator's free list (or malloc); NULL when out of memory. */
struct fx_request *fx_exec_req_get(struct fx_comm *comm);

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
