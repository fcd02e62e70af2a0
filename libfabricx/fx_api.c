/* The collective entry points: argument checks, then the executor's queue. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "fabricx.h"
#include "fx_comm.h"
#include "fx_exec.h"
#include "fx_status_int.h"

/* Do [a, a + alen) and [b, b + blen) share a byte? */
static int overlaps(const void *a, size_t alen, const void *b, size_t blen)
{
    uintptr_t pa = (uintptr_t)a;
    uintptr_t pb = (uintptr_t)b;

    return alen > 0 && blen > 0 && pa < pb + blen && pb < pa + alen;
}

/* Checks what every collective shares; *bytes gets the send size. */
static fx_status check_common(struct fx_comm *comm, const char *name, const void *sendbuf,
                              const void *recvbuf, size_t count, size_t factor, fx_datatype dtype,
                              size_t *bytes)
{
    size_t es = fx_datatype_size(dtype);

    if (es == 0) {
        return fx_comm_note_error(comm, FX_ERR_INVALID_ARG, "%s: invalid datatype %d", name,
                                  (int)dtype);
    }
    if (count > SIZE_MAX / es / factor) {
        return fx_comm_note_error(comm, FX_ERR_INVALID_ARG,
                                  "%s: count %zu of %s overflows the address space", name, count,
                                  fx_datatype_name(dtype));
    }
    if (count > 0 && (sendbuf == NULL || recvbuf == NULL)) {
        return fx_comm_note_error(comm, FX_ERR_INVALID_ARG, "%s: %s is NULL with count %zu", name,
                                  sendbuf == NULL ? "sendbuf" : "recvbuf", count);
    }
    *bytes = count * es;
    return FX_OK;
}

static fx_status submit(struct fx_comm *comm, enum fx_coll coll, const void *sendbuf, void *recvbuf,
                        size_t count, fx_datatype dtype, fx_op op, bool blocking, fx_request_t *out)
{
    struct fx_request *req;

    if (comm->error != FX_OK) {
        return comm->error;
    }
    req = fx_exec_req_get(comm);
    if (req == NULL) {
        return fx_comm_note_error(comm, FX_ERR_NO_MEMORY, "%s: out of memory for a request",
                                  fx_coll_name(coll));
    }
    req->coll    = coll;
    req->sendbuf = sendbuf;
    req->recvbuf = recvbuf;
    req->count   = count;
    req->dtype   = dtype;
    req->op      = op;
    fx_exec_submit(comm, req, !blocking);
    *out = req;
    return FX_OK;
}

static fx_status start_allreduce(const void *sendbuf, void *recvbuf, size_t count,
                                 fx_datatype dtype, fx_op op, fx_comm_t comm, bool blocking,
                                 fx_request_t *req)
{
    size_t bytes = 0;
    fx_status status;

    if (comm == NULL || req == NULL) {
        return fx_set_last_error(FX_ERR_INVALID_ARG, "allreduce: %s is NULL",
                                 comm == NULL ? "comm" : "request");
    }
    status = check_common(comm, "allreduce", sendbuf, recvbuf, count, 1, dtype, &bytes);
    if (status != FX_OK) {
        return status;
    }
    if ((unsigned)op >= FX_NUM_OPS) {
        return fx_comm_note_error(comm, FX_ERR_INVALID_ARG, "allreduce: invalid op %d", (int)op);
    }
    if (sendbuf != recvbuf && overlaps(sendbuf, bytes, recvbuf, bytes)) {
        return fx_comm_note_error(comm, FX_ERR_INVALID_ARG,
                                  "allreduce: sendbuf and recvbuf overlap without being equal");
    }
    return submit(comm, FX_COLL_ALLREDUCE, sendbuf, recvbuf, count, dtype, op, blocking, req);
}

static fx_status start_allgather(const void *sendbuf, void *recvbuf, size_t sendcount,
                                 fx_datatype dtype, fx_comm_t comm, bool blocking,
                                 fx_request_t *req)
{
    size_t bytes = 0;
    fx_status status;

    if (comm == NULL || req == NULL) {
        return fx_set_last_error(FX_ERR_INVALID_ARG, "allgather: %s is NULL",
                                 comm == NULL ? "comm" : "request");
    }
    status = check_common(comm, "allgather", sendbuf, recvbuf, sendcount, (size_t)comm->nranks,
                          dtype, &bytes);
    if (status != FX_OK) {
        return status;
    }
    if (overlaps(sendbuf, bytes, recvbuf, bytes * (size_t)comm->nranks) &&
        sendbuf != (const char *)recvbuf + bytes * (size_t)comm->rank) {
        return fx_comm_note_error(comm, FX_ERR_INVALID_ARG,
                                  "allgather: sendbuf overlaps recvbuf but is not rank %d's slot",
                                  comm->rank);
    }
    return submit(comm, FX_COLL_ALLGATHER, sendbuf, recvbuf, sendcount, dtype, FX_NUM_OPS, blocking,
                  req);
}

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
    fx_request_t req;
    fx_status status = start_allreduce(sendbuf, recvbuf, count, dtype, op, comm, true, &req);

    return status == FX_OK ? fx_exec_wait(req, -1) : status;
}

FX_API fx_status fx_allgather(const void *sendbuf, void *recvbuf, size_t sendcount,
                              fx_datatype dtype, fx_comm_t comm)
{
    fx_request_t req;
    fx_status status = start_allgather(sendbuf, recvbuf, sendcount, dtype, comm, true, &req);

    return status == FX_OK ? fx_exec_wait(req, -1) : status;
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
