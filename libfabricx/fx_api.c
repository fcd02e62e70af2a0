/* The collective and point-to-point entry points: argument checks, then the executor's queue. */
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "fabricx.h"
#include "fx_comm.h"
#include "fx_exec.h"
#include "collectives/coll_tune.h"
#include "fx_status_int.h"

/* Do [a, a + alen) and [b, b + blen) share a byte? */
static int overlaps(const void *a, size_t alen, const void *b, size_t blen)
{
    uintptr_t pa = (uintptr_t)a;
    uintptr_t pb = (uintptr_t)b;

    return alen > 0 && blen > 0 && pa < pb + blen && pb < pa + alen;
}

/* Queues a request with the arguments of `args` (coll through recv_count, and root) and, for a
 * blocking call, waits for it (fx_exec_call: one hold of the lock for both). */
static fx_status submit(struct fx_comm *comm, const struct fx_request *args, bool blocking,
                        fx_request_t *out)
{
    fx_status status;

    if (comm->error != FX_OK) {
        return comm->error;
    }
    status = fx_exec_call(comm, args, blocking, out);
    if (status == FX_ERR_NO_MEMORY) {
        return fx_comm_note_error(comm, FX_ERR_NO_MEMORY, "%s: out of memory for a request",
                                  fx_coll_name(args->coll));
    }
    return status;
}

/* ------------------------------------------------------------------ collectives */

/* The arguments of a collective call, as its request carries them. */
static struct fx_request coll_args(enum fx_coll coll, const void *sendbuf, void *recvbuf,
                                   size_t count, fx_datatype dtype, fx_op op, int root)
{
    return (struct fx_request){.coll      = coll,
                               .sendbuf   = sendbuf,
                               .recvbuf   = recvbuf,
                               .count     = count,
                               .dtype     = dtype,
                               .op        = op,
                               .root      = root,
                               .send_peer = -1,
                               .recv_peer = -1};
}

/* comm is not NULL, nor req for a non-blocking call. */
/* A non-blocking call's request is NULL until the call succeeds, so that a program that waits
 * on the request of a failed call gets FX_ERR_INVALID_ARG, not a stale handle. */
static fx_status check_call(fx_comm_t comm, const char *name, bool blocking, fx_request_t *req)
{
    if (req != NULL) {
        *req = NULL;
    }
    if (comm == NULL) {
        return fx_set_last_error(FX_ERR_INVALID_ARG, "%s: comm is NULL", name);
    }
    if (!blocking && req == NULL) {
        return fx_comm_note_error(comm, FX_ERR_INVALID_ARG, "%s: request is NULL", name);
    }
    return FX_OK;
}

/* A valid datatype and a count whose byte size (times factor) fits; *bytes = count * size. */
static fx_status check_span(struct fx_comm *comm, const char *name, size_t count, size_t factor,
                            fx_datatype dtype, size_t *bytes)
{
    size_t es = fx_datatype_size(dtype);

    if (es == 0) {
        return fx_comm_note_error(comm, FX_ERR_INVALID_ARG, "%s: invalid datatype %d", name,
                                  (int)dtype);
    }
    if (count > SIZE_MAX / es / factor) {
        if (factor == 1) {
            return fx_comm_note_error(comm, FX_ERR_INVALID_ARG,
                                      "%s: count %zu of %s overflows the address space", name,
                                      count, fx_datatype_name(dtype));
        }
        return fx_comm_note_error(comm, FX_ERR_INVALID_ARG,
                                  "%s: count %zu of %s times %zu ranks overflows the address space",
                                  name, count, fx_datatype_name(dtype), factor);
    }
    *bytes = count * es;
    return FX_OK;
}

static fx_status check_op(struct fx_comm *comm, const char *name, fx_op op)
{
    if ((unsigned)op >= FX_NUM_OPS) {
        return fx_comm_note_error(comm, FX_ERR_INVALID_ARG, "%s: invalid op %d", name, (int)op);
    }
    return FX_OK;
}

static fx_status check_root(struct fx_comm *comm, const char *name, int root)
{
    if (root < 0 || root >= comm->nranks) {
        return fx_comm_note_error(comm, FX_ERR_INVALID_ARG, "%s: root %d out of range [0, %d)",
                                  name, root, comm->nranks);
    }
    return FX_OK;
}

static fx_status check_nonnull(struct fx_comm *comm, const char *name, const char *which,
                               const void *buf, size_t count)
{
    if (count > 0 && buf == NULL) {
        return fx_comm_note_error(comm, FX_ERR_INVALID_ARG, "%s: %s is NULL with count %zu", name,
                                  which, count);
    }
    return FX_OK;
}

/* Queues the call, then waits for it when blocking. */
static fx_status run_call(struct fx_comm *comm, struct fx_request args, bool blocking,
                          fx_request_t *req)
{
    return submit(comm, &args, blocking, req);
}

static fx_status start_allreduce(const void *sendbuf, void *recvbuf, size_t count,
                                 fx_datatype dtype, fx_op op, fx_comm_t comm, bool blocking,
                                 fx_request_t *req)
{
    const char *name = "allreduce";
    size_t bytes     = 0;
    fx_status status = check_call(comm, name, blocking, req);

    if (status == FX_OK) {
        status = check_span(comm, name, count, 1, dtype, &bytes);
    }
    if (status == FX_OK) {
        status = check_nonnull(comm, name, "sendbuf", sendbuf, count);
    }
    if (status == FX_OK) {
        status = check_nonnull(comm, name, "recvbuf", recvbuf, count);
    }
    if (status == FX_OK) {
        status = check_op(comm, name, op);
    }
    if (status != FX_OK) {
        return status;
    }
    if (sendbuf != recvbuf && overlaps(sendbuf, bytes, recvbuf, bytes)) {
        return fx_comm_note_error(comm, FX_ERR_INVALID_ARG,
                                  "%s: sendbuf and recvbuf overlap without being equal", name);
    }
    return run_call(comm, coll_args(FX_COLL_ALLREDUCE, sendbuf, recvbuf, count, dtype, op, -1),
                    blocking, req);
}

static fx_status start_allgather(const void *sendbuf, void *recvbuf, size_t sendcount,
                                 fx_datatype dtype, fx_comm_t comm, bool blocking,
                                 fx_request_t *req)
{
    const char *name = "allgather";
    size_t bytes     = 0;
    fx_status status = check_call(comm, name, blocking, req);

    if (status == FX_OK) {
        status = check_span(comm, name, sendcount, (size_t)comm->nranks, dtype, &bytes);
    }
    if (status == FX_OK) {
        status = check_nonnull(comm, name, "sendbuf", sendbuf, sendcount);
    }
    if (status == FX_OK) {
        status = check_nonnull(comm, name, "recvbuf", recvbuf, sendcount);
    }
    if (status != FX_OK) {
        return status;
    }
    if (overlaps(sendbuf, bytes, recvbuf, bytes * (size_t)comm->nranks) &&
        sendbuf != (const char *)recvbuf + bytes * (size_t)comm->rank) {
        return fx_comm_note_error(comm, FX_ERR_INVALID_ARG,
                                  "%s: sendbuf overlaps recvbuf but is not rank %d's slot", name,
                                  comm->rank);
    }
    return run_call(
        comm, coll_args(FX_COLL_ALLGATHER, sendbuf, recvbuf, sendcount, dtype, FX_NUM_OPS, -1),
        blocking, req);
}

static fx_status start_reduce_scatter(const void *sendbuf, void *recvbuf, size_t recvcount,
                                      fx_datatype dtype, fx_op op, fx_comm_t comm, bool blocking,
                                      fx_request_t *req)
{
    const char *name = "reducescatter";
    size_t bytes     = 0;
    fx_status status = check_call(comm, name, blocking, req);

    if (status == FX_OK) {
        status = check_span(comm, name, recvcount, (size_t)comm->nranks, dtype, &bytes);
    }
    if (status == FX_OK) {
        status = check_op(comm, name, op);
    }
    if (status == FX_OK) {
        status = check_nonnull(comm, name, "sendbuf", sendbuf, recvcount);
    }
    if (status == FX_OK) {
        status = check_nonnull(comm, name, "recvbuf", recvbuf, recvcount);
    }
    if (status != FX_OK) {
        return status;
    }
    if (overlaps(sendbuf, bytes * (size_t)comm->nranks, recvbuf, bytes) &&
        recvbuf != (const char *)sendbuf + bytes * (size_t)comm->rank) {
        return fx_comm_note_error(comm, FX_ERR_INVALID_ARG,
                                  "%s: recvbuf overlaps sendbuf but is not rank %d's block", name,
                                  comm->rank);
    }
    return run_call(comm,
                    coll_args(FX_COLL_REDUCESCATTER, sendbuf, recvbuf, recvcount, dtype, op, -1),
                    blocking, req);
}

/* Broadcast (op FX_NUM_OPS) and reduce: buffers are needed on the root only where noted. */
static fx_status start_rooted(enum fx_coll coll, const void *sendbuf, void *recvbuf, size_t count,
                              fx_datatype dtype, fx_op op, int root, fx_comm_t comm, bool blocking,
                              fx_request_t *req)
{
    const char *name = fx_coll_name(coll);
    size_t bytes     = 0;
    fx_status status = check_call(comm, name, blocking, req);
    bool is_root;

    if (status == FX_OK) {
        status = check_span(comm, name, count, 1, dtype, &bytes);
    }
    if (status == FX_OK && coll == FX_COLL_REDUCE) {
        status = check_op(comm, name, op);
    }
    if (status == FX_OK) {
        status = check_root(comm, name, root);
    }
    if (status != FX_OK) {
        return status;
    }
    is_root = root == comm->rank;
    /* Broadcast reads sendbuf on the root only and writes every recvbuf; reduce reads every
     * sendbuf and writes the root's recvbuf only. */
    if (is_root || coll == FX_COLL_REDUCE) {
        status = check_nonnull(comm, name, "sendbuf", sendbuf, count);
    }
    if (status == FX_OK && (is_root || coll == FX_COLL_BROADCAST)) {
        status = check_nonnull(comm, name, "recvbuf", recvbuf, count);
    }
    if (status != FX_OK) {
        return status;
    }
    if (!is_root && coll == FX_COLL_BROADCAST) {
        sendbuf = NULL;
    } else if (!is_root) {
        recvbuf = NULL;
    } else if (sendbuf != recvbuf && overlaps(sendbuf, bytes, recvbuf, bytes)) {
        return fx_comm_note_error(comm, FX_ERR_INVALID_ARG,
                                  "%s: sendbuf and recvbuf overlap without being equal", name);
    }
    return run_call(comm, coll_args(coll, sendbuf, recvbuf, count, dtype, op, root), blocking, req);
}

static fx_status start_barrier(fx_comm_t comm, bool blocking, fx_request_t *req)
{
    fx_status status = check_call(comm, "barrier", blocking, req);

    if (status != FX_OK) {
        return status;
    }
    return run_call(comm, coll_args(FX_COLL_BARRIER, NULL, NULL, 0, FX_UINT8, FX_NUM_OPS, -1),
                    blocking, req);
}

static fx_status start_alltoall(const void *sendbuf, void *recvbuf, size_t count, fx_datatype dtype,
                                fx_comm_t comm, bool blocking, fx_request_t *req)
{
    const char *name = "alltoall";
    size_t bytes     = 0;
    fx_status status = check_call(comm, name, blocking, req);

    if (status == FX_OK) {
        status = check_span(comm, name, count, (size_t)comm->nranks, dtype, &bytes);
    }
    if (status == FX_OK) {
        status = check_nonnull(comm, name, "sendbuf", sendbuf, count);
    }
    if (status == FX_OK) {
        status = check_nonnull(comm, name, "recvbuf", recvbuf, count);
    }
    if (status != FX_OK) {
        return status;
    }
    bytes *= (size_t)comm->nranks;
    if (overlaps(sendbuf, bytes, recvbuf, bytes)) {
        return fx_comm_note_error(comm, FX_ERR_INVALID_ARG,
                                  "%s: sendbuf and recvbuf overlap (there is no in-place form)",
                                  name);
    }
    return run_call(comm,
                    coll_args(FX_COLL_ALLTOALL, sendbuf, recvbuf, count, dtype, FX_NUM_OPS, -1),
                    blocking, req);
}

FX_API fx_status fx_reduce_scatter(const void *sendbuf, void *recvbuf, size_t recvcount,
                                   fx_datatype dtype, fx_op op, fx_comm_t comm)
{
    return start_reduce_scatter(sendbuf, recvbuf, recvcount, dtype, op, comm, true, NULL);
}

FX_API fx_status fx_ireduce_scatter(const void *sendbuf, void *recvbuf, size_t recvcount,
                                    fx_datatype dtype, fx_op op, fx_comm_t comm, fx_request_t *req)
{
    return start_reduce_scatter(sendbuf, recvbuf, recvcount, dtype, op, comm, false, req);
}

FX_API fx_status fx_broadcast(const void *sendbuf, void *recvbuf, size_t count, fx_datatype dtype,
                              int root, fx_comm_t comm)
{
    return start_rooted(FX_COLL_BROADCAST, sendbuf, recvbuf, count, dtype, FX_NUM_OPS, root, comm,
                        true, NULL);
}

FX_API fx_status fx_ibroadcast(const void *sendbuf, void *recvbuf, size_t count, fx_datatype dtype,
                               int root, fx_comm_t comm, fx_request_t *req)
{
    return start_rooted(FX_COLL_BROADCAST, sendbuf, recvbuf, count, dtype, FX_NUM_OPS, root, comm,
                        false, req);
}

FX_API fx_status fx_reduce(const void *sendbuf, void *recvbuf, size_t count, fx_datatype dtype,
                           fx_op op, int root, fx_comm_t comm)
{
    return start_rooted(FX_COLL_REDUCE, sendbuf, recvbuf, count, dtype, op, root, comm, true, NULL);
}

FX_API fx_status fx_ireduce(const void *sendbuf, void *recvbuf, size_t count, fx_datatype dtype,
                            fx_op op, int root, fx_comm_t comm, fx_request_t *req)
{
    return start_rooted(FX_COLL_REDUCE, sendbuf, recvbuf, count, dtype, op, root, comm, false, req);
}

FX_API fx_status fx_barrier(fx_comm_t comm)
{
    return start_barrier(comm, true, NULL);
}

FX_API fx_status fx_ibarrier(fx_comm_t comm, fx_request_t *req)
{
    return start_barrier(comm, false, req);
}

FX_API fx_status fx_alltoall(const void *sendbuf, void *recvbuf, size_t count, fx_datatype dtype,
                             fx_comm_t comm)
{
    return start_alltoall(sendbuf, recvbuf, count, dtype, comm, true, NULL);
}

FX_API fx_status fx_ialltoall(const void *sendbuf, void *recvbuf, size_t count, fx_datatype dtype,
                              fx_comm_t comm, fx_request_t *req)
{
    return start_alltoall(sendbuf, recvbuf, count, dtype, comm, false, req);
}

/* ------------------------------------------------------------------ point to point */

/* A peer of a point-to-point call: another rank of the communicator. */
static fx_status check_peer(struct fx_comm *comm, const char *name, const char *which, int peer)
{
    if (peer < 0 || peer >= comm->nranks) {
        return fx_comm_note_error(comm, FX_ERR_INVALID_ARG, "%s: %s %d out of range [0, %d)", name,
                                  which, peer, comm->nranks);
    }
    if (peer == comm->rank) {
        return fx_comm_note_error(comm, FX_ERR_INVALID_ARG,
                                  "%s: %s %d is this rank (messages to itself are not supported)",
                                  name, which, peer);
    }
    return FX_OK;
}

/* One buffer of a point-to-point call; *bytes gets its size. */
static fx_status check_buf(struct fx_comm *comm, const char *name, const char *which,
                           const void *buf, size_t count, fx_datatype dtype, size_t *bytes)
{
    fx_status status = check_span(comm, name, count, 1, dtype, bytes);

    return status == FX_OK ? check_nonnull(comm, name, which, buf, count) : status;
}

/* Checks the destination and send buffer (sends) and the source and receive buffer (recvs) of
 * a point-to-point call, then queues it, and waits for it when blocking (req NULL). */
static fx_status run_p2p(struct fx_comm *comm, const char *name, struct fx_request call, bool sends,
                         bool recvs, fx_request_t *req)
{
    const struct fx_request *args = &call;
    bool both                     = sends && recvs;
    bool blocking                 = req == NULL;
    size_t sbytes                 = 0;
    size_t rbytes                 = 0;
    fx_status status              = check_call(comm, name, true, NULL);

    if (status != FX_OK) {
        return status;
    }
    if (fx_datatype_size(args->dtype) == 0) {
        return fx_comm_note_error(comm, FX_ERR_INVALID_ARG, "%s: invalid datatype %d", name,
                                  (int)args->dtype);
    }
    if (sends) {
        status = check_peer(comm, name, both ? "dest" : "peer", args->send_peer);
        if (status == FX_OK) {
            status = check_buf(comm, name, both ? "sendbuf" : "buf", args->sendbuf, args->count,
                               args->dtype, &sbytes);
        }
    }
    if (recvs && status == FX_OK) {
        status = check_peer(comm, name, both ? "src" : "peer", args->recv_peer);
        if (status == FX_OK) {
            status = check_buf(comm, name, both ? "recvbuf" : "buf", args->recvbuf,
                               args->recv_count, args->dtype, &rbytes);
        }
    }
    if (status != FX_OK) {
        return status;
    }
    if (overlaps(args->sendbuf, sbytes, args->recvbuf, rbytes)) {
        return fx_comm_note_error(comm, FX_ERR_INVALID_ARG, "%s: sendbuf and recvbuf overlap",
                                  name);
    }
    return submit(comm, args, blocking, req);
}

/* The arguments of a send, a receive, or both. */
static struct fx_request p2p_args(const void *sendbuf, size_t sendcount, int dest, void *recvbuf,
                                  size_t recvcount, int src, fx_datatype dtype)
{
    return (struct fx_request){.coll       = FX_COLL_SENDRECV,
                               .sendbuf    = sendbuf,
                               .recvbuf    = recvbuf,
                               .count      = sendcount,
                               .recv_count = recvcount,
                               .dtype      = dtype,
                               .op         = FX_NUM_OPS,
                               .send_peer  = dest,
                               .recv_peer  = src,
                               .root       = -1};
}

FX_API fx_status fx_send(const void *buf, size_t count, fx_datatype dtype, int peer, fx_comm_t comm)
{
    return run_p2p(comm, "fx_send", p2p_args(buf, count, peer, NULL, 0, -1, dtype), true, false,
                   NULL);
}

FX_API fx_status fx_recv(void *buf, size_t count, fx_datatype dtype, int peer, fx_comm_t comm)
{
    return run_p2p(comm, "fx_recv", p2p_args(NULL, 0, -1, buf, count, peer, dtype), false, true,
                   NULL);
}

FX_API fx_status fx_sendrecv(const void *sendbuf, size_t sendcount, int dest, void *recvbuf,
                             size_t recvcount, int src, fx_datatype dtype, fx_comm_t comm)
{
    return run_p2p(comm, "fx_sendrecv",
                   p2p_args(sendbuf, sendcount, dest, recvbuf, recvcount, src, dtype), true, true,
                   NULL);
}

FX_API fx_status fx_isend(const void *buf, size_t count, fx_datatype dtype, int peer,
                          fx_comm_t comm, fx_request_t *req)
{
    fx_status status = check_call(comm, "fx_isend", false, req);

    return status != FX_OK
               ? status
               : run_p2p(comm, "fx_isend", p2p_args(buf, count, peer, NULL, 0, -1, dtype), true,
                         false, req);
}

FX_API fx_status fx_irecv(void *buf, size_t count, fx_datatype dtype, int peer, fx_comm_t comm,
                          fx_request_t *req)
{
    fx_status status = check_call(comm, "fx_irecv", false, req);

    return status != FX_OK
               ? status
               : run_p2p(comm, "fx_irecv", p2p_args(NULL, 0, -1, buf, count, peer, dtype), false,
                         true, req);
}

FX_API fx_status fx_isendrecv(const void *sendbuf, size_t sendcount, int dest, void *recvbuf,
                              size_t recvcount, int src, fx_datatype dtype, fx_comm_t comm,
                              fx_request_t *req)
{
    fx_status status = check_call(comm, "fx_isendrecv", false, req);

    return status != FX_OK
               ? status
               : run_p2p(comm, "fx_isendrecv",
                         p2p_args(sendbuf, sendcount, dest, recvbuf, recvcount, src, dtype), true,
                         true, req);
}

/* ------------------------------------------------------------------ non-blocking, completion */

FX_API fx_status fx_iallreduce(const void *sendbuf, void *recvbuf, size_t count, fx_datatype dtype,
                               fx_op op, fx_comm_t comm, fx_request_t *req)
{
    return start_allreduce(sendbuf, recvbuf, count, dtype, op, comm, false, req);
}

FX_API fx_status fx_iallgather(const void *sendbuf, void *recvbuf, size_t sendcount,
                               fx_datatype dtype, fx_comm_t comm, fx_request_t *req)
{
    return start_allgather(sendbuf, recvbuf, sendcount, dtype, comm, false, req);
}

FX_API fx_status fx_allreduce(const void *sendbuf, void *recvbuf, size_t count, fx_datatype dtype,
                              fx_op op, fx_comm_t comm)
{
    return start_allreduce(sendbuf, recvbuf, count, dtype, op, comm, true, NULL);
}

FX_API fx_status fx_allgather(const void *sendbuf, void *recvbuf, size_t sendcount,
                              fx_datatype dtype, fx_comm_t comm)
{
    return start_allgather(sendbuf, recvbuf, sendcount, dtype, comm, true, NULL);
}

FX_API const char *fx_comm_last_algo(fx_comm_t comm)
{
    int algo = FX_ALGO_AUTO;

    if (comm == NULL) {
        return "none";
    }
    pthread_mutex_lock(&comm->lock);
    if (comm->exec.last_coll != 0) {
        algo = comm->exec.last_algo[comm->exec.last_coll];
    }
    pthread_mutex_unlock(&comm->lock);
    return algo == FX_ALGO_AUTO ? "none" : fx_coll_algo_name(algo);
}

FX_API fx_status fx_test(fx_request_t req)
{
    if (req == NULL) {
        return fx_set_last_error(FX_ERR_INVALID_ARG, "fx_test: request is NULL");
    }
    return fx_exec_test(req);
}

FX_API fx_status fx_wait(fx_request_t req, int timeout_ms)
{
    if (req == NULL) {
        return fx_set_last_error(FX_ERR_INVALID_ARG, "fx_wait: request is NULL");
    }
    return fx_exec_wait(req, timeout_ms);
}
