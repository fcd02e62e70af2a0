/*
 * Plans: what one rank does in one collective, as a list of data movements. Pure data, built by
 * the algorithms in collectives/ (no sockets, no threads) and run by the executor in
 * libfabricx/, or by the in-memory simulator (coll_sim.h) in tests.
 *
 * Buffers are named, not pointed to: the send buffer, the receive buffer, and a scratch area of
 * `nslots` slots of `slot_count` elements each that the executor provides. Offsets and counts
 * are in elements of the plan's element size. Scratch slot k starts at FX_BUF_SCRATCH offset
 * k * slot_count, so a plan may also send from a slot, copy into one, or reduce into one (a
 * RECV_REDUCE whose destination is its own slot: buf = FX_BUF_SCRATCH, offset = slot *
 * slot_count; the reduction reads each element before writing it).
 *
 * Ordering rules the executor and the simulator both follow:
 *  - sends to one peer are posted in the order they appear in ops[]; so are receives from one
 *    peer; the k-th send from A to B matches the k-th receive on B from A;
 *  - an op starts only after its dependency `dep` (an index into ops[], or -1) has completed;
 *  - a receive completes when its data has arrived and, for FX_PLAN_RECV_REDUCE, has been
 *    reduced into the destination;
 *  - a send completes when its source may be overwritten;
 *  - the plan is complete when every op has completed.
 */
#ifndef FX_COLL_PLAN_H
#define FX_COLL_PLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fabricx.h"

enum fx_plan_kind {
    FX_PLAN_SEND        = 0, /* send buf[offset..offset+count) to peer */
    FX_PLAN_RECV        = 1, /* receive count elements from peer into buf[offset..] */
    FX_PLAN_RECV_REDUCE = 2, /* receive into scratch slot, then
                                buf[offset+i] = src[src_offset+i] (op) slot[i] */
    FX_PLAN_COPY = 3,        /* local: buf[offset+i] = src[src_offset+i] (no peer) */
};

enum fx_plan_buf {
    FX_BUF_SEND    = 0,
    FX_BUF_RECV    = 1,
    FX_BUF_SCRATCH = 2,
};

/* Op flags. */
#define FX_PLAN_FINAL      0x1u /* RECV_REDUCE producing a final result: apply FX_AVG's division */
#define FX_PLAN_SLOT_FIRST 0x2u /* RECV_REDUCE: buf = slot (op) src, the received operand first */

struct fx_plan_op {
    uint8_t kind;        /* enum fx_plan_kind */
    uint8_t buf;         /* SEND: source; RECV/RECV_REDUCE/COPY: destination (enum fx_plan_buf) */
    uint8_t src;         /* RECV_REDUCE: the local operand's buffer; COPY: the source buffer */
    uint8_t flags;       /* FX_PLAN_* flags */
    int32_t peer;        /* SEND/RECV*: the peer rank; COPY: -1 */
    int32_t dep;         /* index of the op that must complete first, or -1 */
    uint32_t slot;       /* RECV_REDUCE: scratch slot the data lands in */
    uint64_t offset;     /* element offset in buf */
    uint64_t src_offset; /* COPY and RECV_REDUCE: element offset in src */
    uint64_t count;      /* elements; 0 only for an empty point-to-point message */
    uint32_t step;       /* the algorithm's step number (for the simulator's step counts) */
    uint32_t phase;      /* 0: reduce-scatter / gather, 1: all-gather phase of all-reduce */
};

struct fx_plan {
    int nranks;
    int rank;
    size_t count;      /* the collective's count: elements per rank (all-gather: sendcount) */
    size_t elem_size;  /* bytes per element */
    uint32_t nslots;   /* scratch slots needed */
    size_t slot_count; /* elements per scratch slot */
    size_t nops;
    size_t cap;
    struct fx_plan_op *ops; /* owned; grown as needed and kept between builds */
};

void fx_plan_init(struct fx_plan *plan);
void fx_plan_fini(struct fx_plan *plan);
/* Empties a plan, keeping its storage for the next build (no allocation on reuse). */
void fx_plan_reset(struct fx_plan *plan);
/* Appends an op and returns its index, or -1 when out of memory. */
int fx_plan_push(struct fx_plan *plan, const struct fx_plan_op *op);

/*
 * Ring all-reduce (reduce-scatter then all-gather) of `count` elements for `rank` of `nranks`.
 * Each of the nranks segments is cut into chunks of at most chunk_bytes (rounded down to whole
 * elements, at least one); chunk c of a segment moves through the ring independently of the
 * others, so the chunks pipeline. The final reduction of each element carries FX_PLAN_FINAL.
 * nslots scratch slots bound the receives in flight. Works for nranks >= 1 and count >= 0
 * (count 0 and nranks 1 give plans with no network ops; nranks 1 out of place gives a COPY).
 * The executor treats sendbuf == recvbuf (in place) by aliasing FX_BUF_SEND to the receive
 * buffer; plans are valid for both.
 * Returns FX_OK, FX_ERR_INVALID_ARG (nranks < 1, rank out of range, elem_size 0) or
 * FX_ERR_NO_MEMORY.
 */
fx_status fx_coll_ring_allreduce(struct fx_plan *plan, int nranks, int rank, size_t count,
                                 size_t elem_size, size_t chunk_bytes, uint32_t nslots);

/*
 * Ring all-gather: rank r's `count` elements (FX_BUF_SEND, offset 0) end at offset r * count of
 * every rank's FX_BUF_RECV. Receives land directly in the receive buffer (no scratch).
 * In place when the send buffer is the rank's own slot of the receive buffer: the executor
 * aliases FX_BUF_SEND to that slot, and the plan's COPY of the own slot is then skipped by the
 * executor when source and destination are the same memory.
 */
/*
 * Two-rank exchange all-reduce (coll_pair.c): each rank sends its whole buffer and receives the
 * other's into a scratch slot to reduce (FX_PLAN_FINAL, rank 0's data as the first operand on
 * both ranks). No receive depends on a send. In place (the executor's send buffer is the
 * receive buffer) the input is first copied to slot 0, sent and reduced from there, and the
 * receive lands in slot 1: two slots of `count` elements; out of place one.
 */
fx_status fx_coll_pair_allreduce(struct fx_plan *plan, int rank, size_t count, size_t elem_size,
                                 bool in_place);

fx_status fx_coll_ring_allgather(struct fx_plan *plan, int nranks, int rank, size_t count,
                                 size_t elem_size, size_t chunk_bytes);

/*
 * The same rings in another order: order[p] is the rank at ring position p (a permutation of
 * 0..nranks-1, the same on every rank), so rank order[p] sends to order[p + 1]. All-gather
 * still leaves rank k's data at offset k * count. FX_ERR_INVALID_ARG when order is not a
 * permutation. NULL order: rank order, as the functions above.
 */
fx_status fx_coll_ring_allreduce_ordered(struct fx_plan *plan, int nranks, int rank,
                                         const int *order, size_t count, size_t elem_size,
                                         size_t chunk_bytes, uint32_t nslots);
fx_status fx_coll_ring_allgather_ordered(struct fx_plan *plan, int nranks, int rank,
                                         const int *order, size_t count, size_t elem_size,
                                         size_t chunk_bytes);

/*
 * Point-to-point (coll_p2p.c): send send_count elements of FX_BUF_SEND to rank dst and receive
 * recv_count elements from rank src into FX_BUF_RECV, either peer -1 for none (so the plan is a
 * send, a receive, or both at once). Each message is cut into chunks of at most chunk_bytes
 * (whole elements, at least one), the same way on both ends; an empty message is one op of
 * count 0, so its header still travels. No op depends on another; no scratch.
 * Returns FX_OK, FX_ERR_INVALID_ARG (rank or a peer out of range, a peer equal to rank,
 * elem_size 0) or FX_ERR_NO_MEMORY.
 */
fx_status fx_coll_p2p(struct fx_plan *plan, int nranks, int rank, int dst, size_t send_count,
                      int src, size_t recv_count, size_t elem_size, size_t chunk_bytes);
/*
 * Appends the ops of another point-to-point call to a plan (fx_coll_p2p's rules; the plan's
 * nranks, rank, count and elem_size stay those of its first call, and these ops' offsets and
 * counts are in elements of their own elem_size). The executor runs consecutive calls as one
 * plan this way. On an error the plan is left as it was.
 */
fx_status fx_coll_p2p_append(struct fx_plan *plan, int nranks, int rank, int dst, size_t send_count,
                             int src, size_t recv_count, size_t elem_size, size_t chunk_bytes);

/*
 * Ring order for a job spread over hosts: host_of[r] is any key naming rank r's host. Ranks of
 * one host become adjacent, hosts in the order their lowest rank appears, ranks within a host in
 * rank order, so the ring crosses each host boundary once. Writes order[0..n).
 */
void fx_coll_ring_order_by_host(const int *host_of, int n, int *order);

/*
 * The same, with the ranks of each host ordered by local[r] (then by rank) instead of by rank
 * alone: the executor passes each rank's PCI locality (NUMA node, then the bus id of its
 * accelerator or NIC), so neighbours on the ring share a PCIe switch where the host allows.
 */
void fx_coll_ring_order(const int *host_of, const int64_t *local, int n, int *order);

#endif /* FX_COLL_PLAN_H */
