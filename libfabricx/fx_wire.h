/*
 * The data-message header carried by every message of a collective (DESIGN.md, "Wire
 * protocol"). 64 bytes, little-endian, fields at fixed offsets:
 *
 *   0  u32 magic      "FXW1" (0x31575846)
 *   4  u16 version    FX_WIRE_VERSION; a different version is a mismatch
 *   6  u8  coll       enum fx_coll
 *   7  u8  dtype      fx_datatype
 *   8  u8  op         fx_op (FX_NUM_OPS for collectives without a reduction)
 *   9  u8  phase      plan phase
 *  10  u8  algo       enum fx_algo the sender's plan follows (ranks must agree)
 *  11  u8  reserved   zero
 *  12  i32 src_rank   sender's rank
 *  16  u64 comm_id    random id chosen by rank 0 at init
 *  24  u64 op_seq     operation number on this communicator, from 1; for send/recv the
 *                     message's number on its (sender, receiver) pair, from 1
 *  32  u64 count      the collective's count argument (send/recv: the sender's count)
 *  40  u64 offset     element offset of the chunk in the sender's buffer (informational:
 *                     the two ends may address the chunk in different buffers)
 *  48  u64 length     elements in the chunk
 *  56  u32 step       plan step
 *  60  i32 root       root rank of broadcast and reduce; -1 for other collectives
 *
 * New fields go into the reserved space with a version bump.
 */
#ifndef FX_WIRE_H
#define FX_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "collectives/coll_tune.h"
#include "fabricx.h"

#define FX_WIRE_MAGIC    0x31575846u
#define FX_WIRE_VERSION  2
#define FX_WIRE_HDR_SIZE 64

struct fx_wire_hdr {
    uint32_t magic;
    uint16_t version;
    uint8_t coll;
    uint8_t dtype;
    uint8_t op;
    uint8_t phase;
    uint8_t algo;
    int32_t src_rank;
    uint64_t comm_id;
    uint64_t op_seq;
    uint64_t count;
    uint64_t offset;
    uint64_t length;
    uint32_t step;
    int32_t root;
};

void fx_wire_encode(const struct fx_wire_hdr *hdr, uint8_t out[FX_WIRE_HDR_SIZE]);
/* Decodes; FX_ERR_MISMATCH when the magic or version is wrong (err says which). */
fx_status fx_wire_decode(const uint8_t in[FX_WIRE_HDR_SIZE], struct fx_wire_hdr *hdr, char *err,
                         size_t errlen);

/*
 * Compares a received header with the one rank `me` expected (want->src_rank is the peer it
 * expected the message from). FX_OK when they agree, else
 * FX_ERR_MISMATCH with a message naming both ranks and what differs, e.g.
 * "allreduce count 12 on rank 3, rank 0 passed 16", "broadcast root 2 on rank 3, rank 0 passed
 * 1", "allreduce algorithm tree on rank 3, ring on rank 0". Point-to-point messages are numbered
 * per (sender, receiver) pair, not per communicator, and named that way: "send/recv: rank 3 sent
 * count 12, rank 0 receives count 16 (message #2 from rank 3 to rank 0)".
 */
fx_status fx_wire_check(const struct fx_wire_hdr *got, const struct fx_wire_hdr *want, int me,
                        char *err, size_t errlen);

#endif /* FX_WIRE_H */
