/*
 * libfabricx: collective communication for distributed training.
 *
 * A rank is one process; a communicator (fx_comm_t) is a group of ranks that run collectives
 * together. Every function returns an fx_status: FX_OK (0) on success, FX_INPROGRESS (> 0) for
 * an operation still running, a negative value on error. Errors are values: the library never
 * aborts the process.
 *
 * Thread safety: distinct communicators may be used from distinct threads at once. Calls on one
 * communicator must not run concurrently from several threads, except fx_comm_abort, which may
 * be called from any thread at any time.
 */
#ifndef FABRICX_H
#define FABRICX_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(FX_BUILDING_LIBRARY) && defined(__GNUC__)
#define FX_API __attribute__((visibility("default")))
#else
#define FX_API
#endif

#define FX_VERSION_MAJOR 0
#define FX_VERSION_MINOR 1
#define FX_VERSION_PATCH 0
/* One number that grows with each release: major * 10000 + minor * 100 + patch. */
#define FX_VERSION_CODE (FX_VERSION_MAJOR * 10000 + FX_VERSION_MINOR * 100 + FX_VERSION_PATCH)

/*
 * Status codes, grouped by blast radius: misuse, local resources, peer and link, internal.
 * FX_STATUS_MAP(X) expands X(NAME, value, description) once per code; it generates the enum,
 * fx_strerror() and the README's table.
 */
#define FX_STATUS_MAP(X)                                                                           \
    X(OK, 0, "success")                                                                            \
    X(INPROGRESS, 1, "operation in progress")                                                      \
    X(ERR_INVALID_ARG, -1, "invalid argument")                                                     \
    X(ERR_MISMATCH, -2, "ranks called different collectives, counts, datatypes or ops")            \
    X(ERR_NO_MEMORY, -10, "out of memory")                                                         \
    X(ERR_UNSUPPORTED, -11, "operation not supported")                                             \
    X(ERR_SYSTEM, -12, "system call failed")                                                       \
    X(ERR_CONNECTION, -20, "connection failed")                                                    \
    X(ERR_PEER_FAILED, -21, "a peer rank failed or closed its connection")                         \
    X(ERR_TIMEOUT, -22, "timed out")                                                               \
    X(ERR_AUTH, -23, "peer failed authentication (wrong job secret?)")                             \
    X(ERR_ABORTED, -24, "communicator aborted")                                                    \
    X(ERR_INTERNAL, -30, "internal error")

typedef enum {
#define FX_STATUS_ENUM_(name, value, text) FX_##name = value,
    FX_STATUS_MAP(FX_STATUS_ENUM_)
#undef FX_STATUS_ENUM_
} fx_status;

/* Element types. Values are part of the wire protocol: never renumbered, only appended. */
typedef enum {
    FX_INT8        = 0,
    FX_UINT8       = 1,
    FX_INT32       = 2,
    FX_UINT32      = 3,
    FX_INT64       = 4,
    FX_UINT64      = 5,
    FX_FLOAT16     = 6, /* IEEE 754 binary16 */
    FX_BFLOAT16    = 7, /* bfloat16: the top 16 bits of a binary32 */
    FX_FLOAT32     = 8,
    FX_FLOAT64     = 9,
    FX_FLOAT8_E4M3 = 10, /* OCP fp8 e4m3: bias 7, no infinities, saturates at +-448 */
    FX_FLOAT8_E5M2 = 11, /* OCP fp8 e5m2: bias 15, IEEE-like with infinities and NaNs */
    FX_NUM_DATATYPES     /* number of datatypes of this version */
} fx_datatype;

/*
 * Reduction operators. Integer FX_SUM and FX_PROD wrap like C unsigned arithmetic; FX_MIN and
 * FX_MAX propagate NaN; FX_AVG is FX_SUM divided by the number of ranks (integer division,
 * truncating, for integer types). fp16, bf16 and fp8 are reduced in fp32 and rounded to
 * nearest-even once per step.
 */
typedef enum {
    FX_SUM  = 0,
    FX_PROD = 1,
    FX_MIN  = 2,
    FX_MAX  = 3,
    FX_AVG  = 4,
    FX_NUM_OPS /* number of operators of this version */
} fx_op;

typedef struct fx_comm *fx_comm_t;
typedef struct fx_request *fx_request_t;

/*
 * The job's rendezvous: rank 0's bootstrap address(es), port and a 256-bit random secret.
 * Treat it as a password: whoever holds it may join the job.
 */
typedef struct {
    char internal[128];
} fx_unique_id;

/* Length of the string form written by fx_unique_id_to_string, terminating NUL included. */
#define FX_UNIQUE_ID_STRLEN 261

/* Returns the library's version as FX_VERSION_CODE of the build. Thread safe. */
FX_API int fx_get_version(void);

/* Returns a static description of a status; unknown values give "unknown status". */
FX_API const char *fx_strerror(fx_status s);

/* Datatype and operator names as nccl-tests spells them ("float", "bfloat16", "sum", ...);
 * NULL for an invalid value. fx_datatype_size returns 0 for an invalid datatype. */
FX_API const char *fx_datatype_name(fx_datatype dtype);
FX_API size_t fx_datatype_size(fx_datatype dtype);
FX_API const char *fx_op_name(fx_op op);

/*
 * Creates a new unique id and starts listening on its port, in the calling process, for the
 * rank 0 that will use it (this process or one forked from it after the call). The bootstrap
 * interface follows FX_SOCKET_IFNAME.
 *   [out] id  the new id; copy it to every rank out of band (fx_unique_id_to_string).
 * Returns FX_OK, FX_ERR_INVALID_ARG (id NULL), FX_ERR_SYSTEM or FX_ERR_CONNECTION (no usable
 * interface).
 */
FX_API fx_status fx_get_unique_id(fx_unique_id *id);

/*
 * String form of an id: printable ASCII, FX_UNIQUE_ID_STRLEN bytes with the NUL, suitable for an
 * environment variable (FX_UNIQUE_ID). from_string rejects damaged strings (checksum).
 * Returns FX_OK or FX_ERR_INVALID_ARG (NULL argument, buffer too small, malformed string).
 */
FX_API fx_status fx_unique_id_to_string(const fx_unique_id *id, char *buf, size_t len);
FX_API fx_status fx_unique_id_from_string(const char *s, fx_unique_id *id);

/*
 * Joins communicator `id` as `rank` of `nranks`. Collective: every rank must call it. Blocks until
 * all ranks have joined and connected, or until FX_TIMEOUT_MS (default 60000 ms) has passed; on
 * timeout the error names the ranks that never arrived (fx_comm_last_error()).
 *   [out] comm    the new communicator, written only on success
 *   [in]  nranks  1 or more
 *   [in]  id      from fx_get_unique_id, identical on every rank
 *   [in]  rank    0 <= rank < nranks, distinct on every rank
 * Returns FX_OK, FX_ERR_INVALID_ARG, FX_ERR_TIMEOUT, FX_ERR_AUTH, FX_ERR_CONNECTION,
 * FX_ERR_NO_MEMORY or FX_ERR_SYSTEM.
 */
FX_API fx_status fx_comm_init_rank(fx_comm_t *comm, int nranks, fx_unique_id id, int rank);

/*
 * Joins a communicator described by the environment: FX_UNIQUE_ID, FX_RANK and FX_NRANKS; or
 * torchrun's RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT, in which case rank 0 listens on
 * MASTER_PORT + 1 and the job secret comes from FX_JOB_SECRET or the file named by
 * FX_JOB_SECRET_FILE (without either, the job is unauthenticated and a warning says so).
 * Returns as fx_comm_init_rank.
 */
FX_API fx_status fx_comm_init_env(fx_comm_t *comm);

/* This rank's index and the communicator's size. Return FX_OK or FX_ERR_INVALID_ARG. */
FX_API fx_status fx_comm_rank(fx_comm_t comm, int *rank);
FX_API fx_status fx_comm_size(fx_comm_t comm, int *nranks);

/*
 * Frees a communicator. Pending non-blocking operations are cancelled (their requests become
 * invalid). Not collective: peers still running a collective with this rank get
 * FX_ERR_PEER_FAILED. Returns FX_OK or FX_ERR_INVALID_ARG.
 */
FX_API fx_status fx_comm_destroy(fx_comm_t comm);

/*
 * Aborts every operation of the communicator: waiting calls return FX_ERR_ABORTED and peers are
 * told. Safe from any thread, e.g. a watchdog. The communicator must still be destroyed.
 */
FX_API fx_status fx_comm_abort(fx_comm_t comm);

/*
 * The last error of the communicator as text: what failed, the peer's rank and host where a peer
 * is at fault. Writes at most len bytes, NUL included. Returns the status of that error (FX_OK
 * and an empty string when none occurred), or FX_ERR_INVALID_ARG.
 */
FX_API fx_status fx_comm_get_error(fx_comm_t comm, char *msg, size_t len);

/*
 * The calling thread's last error text from a call that had no communicator to keep it in
 * (fx_comm_init_rank, fx_comm_init_env, fx_get_unique_id, ...). Valid until the thread's next call.
 */
FX_API const char *fx_last_error(void);

/* fx_comm_split's color for a rank that joins no new communicator. */
#define FX_SPLIT_NOCOLOR (-1)

/*
 * Splits a communicator: ranks passing the same color form a new communicator, ordered by key
 * (ties by their rank in comm). Collective over comm: every rank must call it. A rank passing
 * FX_SPLIT_NOCOLOR takes part but gets *newcomm = NULL. The new communicator is independent of
 * comm (its own connections and configuration from the environment); destroy it with
 * fx_comm_destroy, before or after comm.
 *   [in]  color  0 or more, or FX_SPLIT_NOCOLOR
 *   [out] newcomm  the new communicator, or NULL (FX_SPLIT_NOCOLOR, or an error)
 * Returns FX_OK, FX_ERR_INVALID_ARG (NULL comm or newcomm; any rank's invalid color: every rank
 * then returns it, naming that rank), or the errors of fx_allgather and fx_comm_init_rank.
 */
FX_API fx_status fx_comm_split(fx_comm_t comm, int color, int key, fx_comm_t *newcomm);

/*
 * The algorithm that ran this rank's most recently started collective ("ring", "pair", "tree",
 * ...; the tuner's choice or FX_ALGO's), or "none" before the first. For tools and tests: with
 * FX_DEBUG=INFO the library also logs each collective's choice when it changes.
 */
FX_API const char *fx_comm_last_algo(fx_comm_t comm);

/*
 * Traffic between this rank and one peer since the communicator was created (fx_comm_stats).
 * Blocked times are the time during which at least one message to (from) the peer was posted
 * and not yet complete: for sends, data queued that the link was not draining. The rates are
 * smoothed once a second, so they tell the link's own speed while it had data to move (the time
 * a collective gave it nothing to do does not count); each is the median of the last five
 * one-second samples, 0 until the first. Where the transport sees the wire (TCP), recv_gbps is
 * the arrival rate of messages of 64 KiB or more while they arrive and send_gbps the bytes
 * acknowledged over wire_busy_ns; otherwise (shm) both come from busy stretches of 64 KiB or
 * more of the blocked times. docs/linkstats.md has the details.
 */
typedef struct {
    int peer;            /* the peer's rank */
    char transport[8];   /* "tcp", "shm"; "" when this rank has no traffic path to it */
    char host[64];       /* the peer's host name */
    char address[48];    /* the peer's data-plane address as this rank reached it; "" unknown */
    uint64_t bytes_sent; /* payload bytes */
    uint64_t bytes_received;
    uint64_t messages_sent;
    uint64_t messages_received;
    uint64_t send_blocked_ns;
    uint64_t recv_blocked_ns;
    uint64_t wire_busy_ns; /* time the transport had data for the peer queued or in flight on
                              the wire (TCP: the kernel's count); 0 where it cannot tell (shm) */
    double send_gbps;      /* 1e9 bits per second */
    double recv_gbps;
} fx_link_stats;

/*
 * Per-peer link statistics of this rank: one entry per other rank, in rank order. Not
 * collective; safe while operations run (it takes the communicator's lock briefly). With
 * FX_LINK_STATS=0 the counters stay zero.
 *   [out] links   up to max entries (links may be NULL when max is 0)
 *   [in]  max     capacity of links
 *   [out] nlinks  the number of peers (nranks - 1), whatever max is
 * Returns FX_OK or FX_ERR_INVALID_ARG (NULL comm or nlinks, max < 0, links NULL with max > 0).
 */
FX_API fx_status fx_comm_stats(fx_comm_t comm, fx_link_stats *links, int max, int *nlinks);

/*
 * All-reduce: recvbuf[i] = op over ranks of sendbuf[i], for count elements; every rank gets
 * bitwise identical results. In place when sendbuf == recvbuf. Blocking; collective.
 * Returns FX_OK, FX_ERR_INVALID_ARG (NULL buffer with count > 0, invalid dtype or op, count whose
 * byte size overflows), FX_ERR_MISMATCH, FX_ERR_PEER_FAILED, FX_ERR_TIMEOUT, FX_ERR_ABORTED.
 * After an error other than FX_ERR_INVALID_ARG the communicator is broken: destroy it.
 */
FX_API fx_status fx_allreduce(const void *sendbuf, void *recvbuf, size_t count, fx_datatype dtype,
                              fx_op op, fx_comm_t comm);

/*
 * All-gather: recvbuf holds nranks * sendcount elements, rank r's sendbuf at offset
 * r * sendcount. In place when sendbuf == recvbuf + rank * sendcount * size. Blocking.
 * Returns as fx_allreduce.
 */
FX_API fx_status fx_allgather(const void *sendbuf, void *recvbuf, size_t sendcount,
                              fx_datatype dtype, fx_comm_t comm);

/*
 * Reduce-scatter: the element-wise reduction over ranks of sendbuf (nranks * recvcount
 * elements), of which rank r receives block r (elements r * recvcount .. (r + 1) * recvcount)
 * in recvbuf. In place when recvbuf == sendbuf + rank * recvcount * size (the rank's own block).
 * Every rank's block is bitwise what fx_allreduce would have left there. Blocking; collective.
 * Returns as fx_allreduce (FX_ERR_INVALID_ARG also when nranks * recvcount overflows, or the
 * buffers overlap other than in place).
 */
FX_API fx_status fx_reduce_scatter(const void *sendbuf, void *recvbuf, size_t recvcount,
                                   fx_datatype dtype, fx_op op, fx_comm_t comm);

/*
 * Broadcast: count elements of root's sendbuf land in every rank's recvbuf (root's included).
 * sendbuf is read on root only (others may pass NULL); in place when root passes
 * sendbuf == recvbuf. Every rank must pass the same root and count. Blocking; collective.
 * Returns as fx_allreduce (FX_ERR_INVALID_ARG also for a root out of range [0, nranks)); ranks
 * that pass different roots get FX_ERR_MISMATCH naming both.
 */
FX_API fx_status fx_broadcast(const void *sendbuf, void *recvbuf, size_t count, fx_datatype dtype,
                              int root, fx_comm_t comm);

/*
 * Reduce: recvbuf on root gets the element-wise reduction over ranks of sendbuf; recvbuf is
 * written on root only (others may pass NULL). In place on root when sendbuf == recvbuf.
 * Blocking; collective. Returns as fx_broadcast.
 */
FX_API fx_status fx_reduce(const void *sendbuf, void *recvbuf, size_t count, fx_datatype dtype,
                           fx_op op, int root, fx_comm_t comm);

/*
 * Barrier: returns once every rank has entered it (dissemination: ceil(log2 nranks) rounds of
 * empty messages). Blocking; collective. Returns as fx_allreduce.
 */
FX_API fx_status fx_barrier(fx_comm_t comm);

/*
 * All-to-all: block d of sendbuf (count elements at d * count) goes to rank d, which receives it
 * as block r (at r * count) of its recvbuf, r being the sender. Both buffers hold nranks * count
 * elements and must not overlap (no in-place form). Blocking; collective.
 * Returns as fx_allreduce (FX_ERR_INVALID_ARG also when nranks * count overflows).
 */
FX_API fx_status fx_alltoall(const void *sendbuf, void *recvbuf, size_t count, fx_datatype dtype,
                             fx_comm_t comm);

/*
 * Point-to-point messages between two ranks of a communicator. Not collective: only the two
 * ranks take part, and the first message between them opens their connection (ranks that never
 * exchange messages never connect). Messages from one rank to another are matched in the order
 * they were sent: the n-th fx_send (or fx_sendrecv) from rank a to rank b meets the n-th
 * fx_recv (or fx_sendrecv) on b from a. The receiver must pass the same count and datatype as
 * the sender: otherwise it gets FX_ERR_MISMATCH naming both ranks and both values, and the
 * communicator is broken on every rank (the sender too).
 * Calls of one communicator run in the order they were made, collectives included, so two ranks
 * must make the calls that involve each other in an order that lets each one complete.
 *
 * These calls block until their buffers may be reused (a send's data may still be on its way);
 * fx_isend, fx_irecv and fx_isendrecv below are their non-blocking forms.
 *
 * fx_send: sends count elements of buf to rank peer.
 * fx_recv: receives count elements from rank peer into buf.
 *   [in]  buf    count elements; may be NULL when count is 0. Owned by the caller; the library
 *                uses it only during the call.
 *   [in]  count  0 or more: a message of 0 elements still travels (and is matched)
 *   [in]  peer   0 <= peer < nranks, not the calling rank
 * Thread safety: as every call on a communicator (see the top of this file).
 * Return FX_OK, FX_ERR_INVALID_ARG (peer out of range or the calling rank, NULL buffer with
 * count > 0, invalid dtype, count whose byte size overflows; fx_comm_get_error says which; the
 * communicator stays usable), FX_ERR_MISMATCH, FX_ERR_PEER_FAILED (the peer died or left),
 * FX_ERR_CONNECTION, FX_ERR_TIMEOUT (no progress for FX_TIMEOUT_MS, naming the rank waited for),
 * FX_ERR_ABORTED. After an error other than FX_ERR_INVALID_ARG the communicator is broken.
 */
FX_API fx_status fx_send(const void *buf, size_t count, fx_datatype dtype, int peer,
                         fx_comm_t comm);
FX_API fx_status fx_recv(void *buf, size_t count, fx_datatype dtype, int peer, fx_comm_t comm);

/*
 * Sends sendcount elements of sendbuf to rank dest and receives recvcount elements from rank src
 * into recvbuf, both at once: the send and the receive progress independently, so two ranks
 * that call fx_sendrecv towards each other (or every rank of a ring, each sending right and
 * receiving from the left) never deadlock, whatever the sizes. dest and src may differ; either
 * count may be 0. Each direction is one message, matched as fx_send and fx_recv are.
 *   [in]  sendbuf, recvbuf  must not overlap (NULL allowed with a count of 0)
 *   [in]  dest, src         0 <= rank < nranks, not the calling rank
 * Returns as fx_send (FX_ERR_INVALID_ARG also for overlapping buffers).
 */
FX_API fx_status fx_sendrecv(const void *sendbuf, size_t sendcount, int dest, void *recvbuf,
                             size_t recvcount, int src, fx_datatype dtype, fx_comm_t comm);

/*
 * Non-blocking point-to-point: fx_send, fx_recv and fx_sendrecv that return at once with a
 * request, completed by fx_test or fx_wait. Consecutive point-to-point calls of a communicator
 * (blocking or not, with no collective between them) run at once, as one batch: a rank may start
 * fx_isend to a peer before its fx_irecv from that peer, and the peer the same, whatever the
 * sizes. Messages still match in order per pair (the n-th send from a to b meets the n-th
 * receive on b from a), and requests complete in the order they were started. A collective call
 * ends the batch: the calls after it start once it has completed.
 *   [out] req  the request; NULL when the call fails (fx_test and fx_wait on it then return
 *              FX_ERR_INVALID_ARG); must not be NULL
 * Return FX_OK when queued, or FX_ERR_INVALID_ARG as the blocking forms (the request is not
 * made); the operation's own status comes from fx_test or fx_wait.
 */
FX_API fx_status fx_isend(const void *buf, size_t count, fx_datatype dtype, int peer,
                          fx_comm_t comm, fx_request_t *req);
FX_API fx_status fx_irecv(void *buf, size_t count, fx_datatype dtype, int peer, fx_comm_t comm,
                          fx_request_t *req);
FX_API fx_status fx_isendrecv(const void *sendbuf, size_t sendcount, int dest, void *recvbuf,
                              size_t recvcount, int src, fx_datatype dtype, fx_comm_t comm,
                              fx_request_t *req);

/*
 * Non-blocking forms. The buffers belong to the library until fx_test or fx_wait reports the
 * request complete. Several requests may be outstanding on one communicator; they run and
 * complete in the order they were started, and every rank must start them in the same order.
 *   [out] req  the request; NULL when the call fails (fx_test and fx_wait on it then return
 *              FX_ERR_INVALID_ARG)
 */
FX_API fx_status fx_iallreduce(const void *sendbuf, void *recvbuf, size_t count, fx_datatype dtype,
                               fx_op op, fx_comm_t comm, fx_request_t *req);
FX_API fx_status fx_iallgather(const void *sendbuf, void *recvbuf, size_t sendcount,
                               fx_datatype dtype, fx_comm_t comm, fx_request_t *req);
FX_API fx_status fx_ireduce_scatter(const void *sendbuf, void *recvbuf, size_t recvcount,
                                    fx_datatype dtype, fx_op op, fx_comm_t comm, fx_request_t *req);
FX_API fx_status fx_ibroadcast(const void *sendbuf, void *recvbuf, size_t count, fx_datatype dtype,
                               int root, fx_comm_t comm, fx_request_t *req);
FX_API fx_status fx_ireduce(const void *sendbuf, void *recvbuf, size_t count, fx_datatype dtype,
                            fx_op op, int root, fx_comm_t comm, fx_request_t *req);
FX_API fx_status fx_ibarrier(fx_comm_t comm, fx_request_t *req);
FX_API fx_status fx_ialltoall(const void *sendbuf, void *recvbuf, size_t count, fx_datatype dtype,
                              fx_comm_t comm, fx_request_t *req);

/*
 * Completes a request. fx_test never blocks; fx_wait blocks at most timeout_ms milliseconds
 * (a negative value waits until the operation ends, bounded by FX_TIMEOUT_MS of no progress).
 * Return FX_INPROGRESS while the operation runs (the request stays valid); otherwise the
 * request is complete and freed, and the return value is the operation's status.
 */
FX_API fx_status fx_test(fx_request_t req);
FX_API fx_status fx_wait(fx_request_t req, int timeout_ms);

#ifdef __cplusplus
}
#endif

#endif /* FABRICX_H */
