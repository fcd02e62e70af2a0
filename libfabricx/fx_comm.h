/*
 * The communicator: configuration, bootstrap, transport connections, the executor's state and
 * the error state. Internal to libfabricx/.
 *
 * Locking: `lock` serialises everything below it between the user's threads, the progress
 * thread and fx_comm_abort. Nobody holds it while sleeping in epoll_wait.
 */
#ifndef FX_COMM_H
#define FX_COMM_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "collectives/coll_cost.h"
#include "collectives/coll_plan.h"
#include "collectives/coll_tune.h"
#include "fabricx.h"
#include "fx_boot.h"
#include "fx_config.h"
#include "fx_links.h"
#include "fx_wire.h"
#include "transports/transport.h"

/* One call: the public fx_request. */
struct fx_request {
    struct fx_request *next;     /* in the communicator's queue or free list */
    struct fx_request *all_next; /* every request object of the communicator */
    struct fx_comm *comm;
    enum fx_coll coll;
    const void *sendbuf;
    void *recvbuf;
    size_t count;
    fx_datatype dtype;
    fx_op op;
    int root;          /* broadcast, reduce: the root rank; -1 otherwise */
    int algo;          /* enum fx_algo the executor chose when it started the operation */
    uint64_t seq;      /* collectives: the communicator's operation number */
    int send_peer;     /* send/recv: where to send count elements of sendbuf, or -1 */
    int recv_peer;     /* send/recv: whence to receive recv_count elements, or -1 */
    size_t recv_count; /* send/recv */
    uint64_t send_seq; /* send/recv: the message's number from this rank to send_peer */
    uint64_t recv_seq; /* send/recv: the message's number from recv_peer to this rank */
    size_t ops_left;   /* ops of the running plan that belong to it and are not complete yet */
    fx_status status;
    bool done;
};

/* The ops of the active plan that talk to one peer in one direction, in plan order: a list
 * linked through fx_exec.op_next, so that ops appended to a running plan join their lane's end. */
struct fx_lane {
    int peer;
    bool send;
    const struct fx_transport_ops *ops; /* the connection's transport */
    struct fx_tp_conn *conn;
    struct fx_link_dir *stats; /* the peer's statistics in this direction */
    uint32_t first;            /* oldest op not yet complete; FX_NO_OP: none */
    uint32_t post;             /* next op to post (first, or after it); FX_NO_OP: all posted */
    uint32_t last;             /* the lane's last op; FX_NO_OP: none yet */
};

#define FX_NO_OP     UINT32_MAX
#define FX_HDR_BLOCK 256 /* wire headers per block of fx_exec.hdr_blocks */

/* The tuner's answer for one case, kept so that a loop of calls does not re-run the model. */
struct fx_tune_memo {
    struct fx_tune_case tc; /* the inputs (params copied below, tc.params unused) */
    struct fx_cost_params params;
    struct fx_tune_choice ch;
    bool valid;
};

#define FX_TUNE_MEMO 64 /* entries, direct-mapped on (collective, count, element size) */

struct fx_exec {
    struct fx_request *head; /* queue; from head to batch_last: the requests of the running plan */
    struct fx_request *tail;
    struct fx_request *batch_last; /* a collective alone, or a run of point-to-point calls */
    struct fx_request *free_reqs;
    struct fx_request *all_reqs; /* owned: freed at destroy, whatever their state */
    bool running;
    struct fx_plan plan;
    size_t cap;                 /* capacity of the per-op arrays below */
    uint8_t *op_done;           /* per plan op */
    struct fx_tp_req **tp_reqs; /* per plan op, while posted */
    struct fx_request **op_req; /* per plan op: the request it belongs to */
    uint32_t *op_next;          /* per plan op: the next op of its lane, or FX_NO_OP */
    /* Per plan op, in blocks that never move: a transport writes a received header while the
     * plan may grow. */
    uint8_t (**hdr_blocks)[FX_WIRE_HDR_SIZE];
    size_t nhdr_blocks;
    struct fx_lane *lanes;
    int nlanes;
    int unconnected;  /* lanes of the running plan still without their connection */
    int *lane_index;  /* 2 * nranks: (peer, direction) -> lane, -1 none */
    uint8_t *scratch; /* nslots * max_chunk bytes, touched at init; a plan addresses
                         slot k at k * plan.slot_count elements */
    size_t max_chunk;
    uint32_t nslots;
    int64_t last_progress_ms; /* when an op last moved, as of the last clock read */
    bool progressed;          /* an op moved since then: the next clock read sets it */
    uint64_t moves;           /* progress rounds in which an op moved (the spin budget's) */
    uint32_t idle_rounds;     /* rounds without progress (check_timeout reads the clock on some) */
    bool stall_reported;      /* rank 0 was told this rank waits */
    int spin_us;              /* FX_SPIN_US */
    bool spin_yield;          /* more ranks than cores on this host: yield while polling */
    struct fx_link_clock clk; /* this progress round's clocks for the link statistics */
    int last_algo[FX_COLL_END]; /* the last algorithm chosen per collective (logged on change) */
    int last_coll;              /* the last collective started (not send/recv); 0: none */
    struct fx_tune_memo memo[FX_TUNE_MEMO];
};

/* A transport this rank runs: shared memory to ranks of its host, the network to the others. */
struct fx_comm_tp {
    const struct fx_transport_ops *ops;
    struct fx_tp *tp;
    struct fx_tp_listener *lst;
};

struct fx_comm {
    int rank;
    int nranks;
    struct fx_config cfg;
    struct fx_boot boot;
    struct fx_comm_tp tps[FX_BOOT_MAX_ADDRS]; /* those in use; ntps of them */
    int ntps;
    int8_t *peer_tp; /* [nranks]: index in tps of the transport to that rank; -1 itself */
    struct fx_tp_conn **send_conns; /* [nranks]: connections this rank opened (it sends) */
    struct fx_tp_conn **recv_conns; /* [nranks]: connections it accepted (it receives) */
    struct fx_tp_conn **connecting; /* [nranks]: on-demand connects in progress (fx_conn.h) */
    int *ring_order; /* [nranks]: the rank at each ring position (ranks of a host adjacent) */
    int ring_pos;    /* this rank's position */
    int nhosts;      /* hosts the ranks sit on (the bootstrap's host identity) */

    pthread_mutex_t lock;
    pthread_cond_t cond;
    int epfd;   /* transport wait fd, control sockets, wake eventfd */
    int wakefd; /* eventfd */
    pthread_t thread;
    bool thread_running;
    bool shutdown;
    int drivers; /* user threads driving progress in fx_wait */
    bool parked; /* the progress thread sleeps on cond */

    struct fx_exec exec;
    uint64_t op_seq;            /* collectives started; point-to-point calls do not count */
    uint64_t *p2p_sent;         /* [nranks]: messages queued for sending to each rank */
    uint64_t *p2p_recvd;        /* [nranks]: messages queued for receiving from each rank */
    struct fx_links links;      /* per-peer statistics; rank 0: the slow-link monitor */
    struct fx_cost_params tune; /* the cost model's parameters, the same on every rank */

    fx_status error; /* first fatal error; FX_OK while healthy */
    char errmsg[512];
    fx_status last_status; /* last error of any kind, for fx_comm_get_error */
    char last_msg[512];
};

/* Records a local, non-fatal error (bad argument) for fx_comm_get_error; returns status. */
fx_status fx_comm_note_error(struct fx_comm *comm, fx_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * Breaks the communicator with its first fatal error: fails every queued operation, closes the
 * data connections (freeing posted receives so user buffers are released) and, when
 * `propagate`, tells the other ranks through rank 0. Later errors are ignored. Call with the
 * lock held.
 */
void fx_comm_fail(struct fx_comm *comm, fx_status status, int failed_rank, bool propagate,
                  const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* The transport that carries traffic between this rank and peer. */
static inline const struct fx_transport_ops *fx_comm_peer_ops(const struct fx_comm *comm, int peer)
{
    return comm->tps[comm->peer_tp[peer]].ops;
}

/* Wakes whoever sleeps in epoll_wait on the communicator. */
void fx_comm_wake(struct fx_comm *comm);

#endif /* FX_COMM_H */
