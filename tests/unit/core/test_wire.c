/* Wire header: round trips, corrupt input, and the mismatch messages. */
#include <criterion/criterion.h>
#include <string.h>

#include "fx_wire.h"

static struct fx_wire_hdr sample(void)
{
    struct fx_wire_hdr h = {
        .coll     = FX_COLL_ALLREDUCE,
        .dtype    = FX_FLOAT32,
        .op       = FX_SUM,
        .phase    = 1,
        .src_rank = 3,
        .comm_id  = 0x1122334455667788ull,
        .op_seq   = 42,
        .count    = 1048573,
        .offset   = 65536,
        .length   = 4096,
        .step     = 6,
        .algo     = FX_ALGO_RING,
        .root     = -1,
    };
    return h;
}

Test(wire_hdr, round_trips_every_field, .timeout = 10)
{
    struct fx_wire_hdr in = sample();
    struct fx_wire_hdr out;
    uint8_t buf[FX_WIRE_HDR_SIZE];
    char err[200];

    fx_wire_encode(&in, buf);
    cr_assert_eq(fx_wire_decode(buf, &out, err, sizeof(err)), FX_OK);
    cr_expect_eq(out.coll, in.coll);
    cr_expect_eq(out.dtype, in.dtype);
    cr_expect_eq(out.op, in.op);
    cr_expect_eq(out.phase, in.phase);
    cr_expect_eq(out.src_rank, in.src_rank);
    cr_expect_eq(out.comm_id, in.comm_id);
    cr_expect_eq(out.op_seq, in.op_seq);
    cr_expect_eq(out.count, in.count);
    cr_expect_eq(out.offset, in.offset);
    cr_expect_eq(out.length, in.length);
    cr_expect_eq(out.step, in.step);
    cr_expect_eq(out.algo, in.algo);
    cr_expect_eq(out.root, in.root);
    in.root = 7;
    in.coll = FX_COLL_BROADCAST;
    fx_wire_encode(&in, buf);
    cr_assert_eq(fx_wire_decode(buf, &out, err, sizeof(err)), FX_OK);
    cr_expect_eq(out.root, 7);
    cr_expect_eq(out.coll, FX_COLL_BROADCAST);
}

Test(wire_hdr, is_little_endian_at_fixed_offsets, .timeout = 10)
{
    struct fx_wire_hdr in = sample();
    uint8_t buf[FX_WIRE_HDR_SIZE];

    fx_wire_encode(&in, buf);
    cr_expect_eq(memcmp(buf, "FXW1", 4), 0);
    cr_expect_eq(buf[4], FX_WIRE_VERSION);
    cr_expect_eq(buf[24], 42);
    cr_expect_eq(buf[16], 0x88);
    cr_expect_eq(buf[23], 0x11);
    cr_expect_eq(buf[10], FX_ALGO_RING);
    cr_expect_eq(buf[60], 0xff); /* root -1 */
    cr_expect_eq(buf[63], 0xff);
}

Test(wire_hdr, rejects_bad_magic_and_version, .timeout = 10)
{
    struct fx_wire_hdr in = sample();
    struct fx_wire_hdr out;
    uint8_t buf[FX_WIRE_HDR_SIZE];
    char err[200];

    fx_wire_encode(&in, buf);
    buf[0] ^= 0xff;
    cr_expect_eq(fx_wire_decode(buf, &out, err, sizeof(err)), FX_ERR_MISMATCH);
    cr_expect(strstr(err, "magic") != NULL, "err: %s", err);
    fx_wire_encode(&in, buf);
    buf[4] = 9;
    cr_expect_eq(fx_wire_decode(buf, &out, err, sizeof(err)), FX_ERR_MISMATCH);
    cr_expect(strstr(err, "version 9") != NULL, "err: %s", err);
}

Test(wire_hdr, random_bytes_never_crash_and_are_rejected, .timeout = 10)
{
    uint8_t buf[FX_WIRE_HDR_SIZE];
    struct fx_wire_hdr out;
    char err[200];
    unsigned seed = 12345;

    for (int i = 0; i < 10000; i++) {
        for (int j = 0; j < FX_WIRE_HDR_SIZE; j++) {
            seed   = seed * 1103515245u + 12345u;
            buf[j] = (uint8_t)(seed >> 16);
        }
        cr_assert_eq(fx_wire_decode(buf, &out, err, sizeof(err)), FX_ERR_MISMATCH);
    }
}

static void expect_mismatch(struct fx_wire_hdr got, const char *needle)
{
    struct fx_wire_hdr want = sample();
    char err[300];

    cr_expect_eq(fx_wire_check(&got, &want, 0, err, sizeof(err)), FX_ERR_MISMATCH);
    cr_expect(strstr(err, needle) != NULL, "expected \"%s\" in \"%s\"", needle, err);
}

Test(wire_check, names_ranks_and_what_differs, .timeout = 10)
{
    struct fx_wire_hdr h    = sample();
    struct fx_wire_hdr want = sample();
    char err[300];

    cr_expect_eq(fx_wire_check(&h, &want, 0, err, sizeof(err)), FX_OK);
    h.count = 12;
    expect_mismatch(h, "allreduce count 12 on rank 3, rank 0 passed 1048573");
    h       = sample();
    h.dtype = FX_FLOAT16;
    expect_mismatch(h, "datatype half on rank 3, rank 0 passed float");
    h    = sample();
    h.op = FX_MAX;
    expect_mismatch(h, "op max on rank 3, rank 0 passed sum");
    h      = sample();
    h.coll = FX_COLL_ALLGATHER;
    expect_mismatch(h, "rank 3 called allgather, rank 0 called allreduce");
    h        = sample();
    h.op_seq = 43;
    expect_mismatch(h, "operation #43");
    h         = sample();
    h.comm_id = 1;
    expect_mismatch(h, "another communicator");
    h        = sample();
    h.length = 1;
    expect_mismatch(h, "chunk layout differs");
    h          = sample();
    h.src_rank = 5;
    expect_mismatch(h, "claiming to be from rank 5, expected rank 3");
    h      = sample();
    h.algo = FX_ALGO_TREE;
    expect_mismatch(h, "allreduce algorithm tree on rank 3, ring on rank 0 (operation #42)");
}

Test(wire_check, rooted_collectives_name_both_roots, .timeout = 10)
{
    struct fx_wire_hdr want = sample();
    struct fx_wire_hdr h;
    char err[300];

    want.coll = FX_COLL_BROADCAST;
    want.op   = FX_NUM_OPS;
    want.root = 1;
    h         = want;
    cr_expect_eq(fx_wire_check(&h, &want, 0, err, sizeof(err)), FX_OK);
    h.root = 2;
    cr_assert_eq(fx_wire_check(&h, &want, 0, err, sizeof(err)), FX_ERR_MISMATCH);
    cr_expect_str_eq(err, "broadcast root 2 on rank 3, rank 0 passed 1");
}

Test(wire_check, point_to_point_names_pair_counts_and_calls, .timeout = 10)
{
    struct fx_wire_hdr want = sample();
    struct fx_wire_hdr h;
    char err[300];

    want.coll   = FX_COLL_SENDRECV;
    want.op     = FX_NUM_OPS;
    want.phase  = 0;
    want.op_seq = 2;
    h           = want;
    cr_expect_eq(fx_wire_check(&h, &want, 0, err, sizeof(err)), FX_OK);
    cr_expect_str_eq(fx_coll_name(FX_COLL_SENDRECV), "send/recv");
    h.count = 12;
    cr_assert_eq(fx_wire_check(&h, &want, 0, err, sizeof(err)), FX_ERR_MISMATCH);
    cr_expect_str_eq(err, "send/recv: rank 3 sent count 12, rank 0 receives count 1048573 "
                          "(message #2 from rank 3 to rank 0)");
    h       = want;
    h.dtype = FX_INT64;
    cr_assert_eq(fx_wire_check(&h, &want, 0, err, sizeof(err)), FX_ERR_MISMATCH);
    cr_expect(strstr(err, "rank 3 sent datatype int64, rank 0 receives datatype float") != NULL,
              "%s", err);
    h        = want;
    h.op_seq = 3;
    cr_assert_eq(fx_wire_check(&h, &want, 0, err, sizeof(err)), FX_ERR_MISMATCH);
    cr_expect(strstr(err, "message #3") != NULL && strstr(err, "expected #2") != NULL, "%s", err);
    /* A collective meeting a point-to-point message: the calls differ, whatever the numbers. */
    h        = sample();
    h.op_seq = 2;
    cr_assert_eq(fx_wire_check(&h, &want, 0, err, sizeof(err)), FX_ERR_MISMATCH);
    cr_expect_str_eq(err, "rank 3 called allreduce, rank 0 called send/recv");
    h        = want;
    h.op_seq = 7;
    want     = sample();
    cr_assert_eq(fx_wire_check(&h, &want, 0, err, sizeof(err)), FX_ERR_MISMATCH);
    cr_expect_str_eq(err, "rank 3 called send/recv, rank 0 called allreduce");
}
