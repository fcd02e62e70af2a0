/* Encoding and checking of the data-message header (layout in fx_wire.h). */
#include "fx_wire.h"

#include <endian.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/* Little-endian fields, one load or store each (the header is read and written on every
 * message: byte loops showed in profiles of small collectives). */
static void put16(uint8_t *p, uint16_t v)
{
    v = htole16(v);
    memcpy(p, &v, sizeof(v));
}

static void put32(uint8_t *p, uint32_t v)
{
    v = htole32(v);
    memcpy(p, &v, sizeof(v));
}

static void put64(uint8_t *p, uint64_t v)
{
    v = htole64(v);
    memcpy(p, &v, sizeof(v));
}

static uint16_t get16(const uint8_t *p)
{
    uint16_t v;

    memcpy(&v, p, sizeof(v));
    return le16toh(v);
}

static uint32_t get32(const uint8_t *p)
{
    uint32_t v;

    memcpy(&v, p, sizeof(v));
    return le32toh(v);
}

static uint64_t get64(const uint8_t *p)
{
    uint64_t v;

    memcpy(&v, p, sizeof(v));
    return le64toh(v);
}

void fx_wire_encode(const struct fx_wire_hdr *hdr, uint8_t out[FX_WIRE_HDR_SIZE])
{
    memset(out, 0, FX_WIRE_HDR_SIZE);
    put32(out + 0, FX_WIRE_MAGIC);
    put16(out + 4, FX_WIRE_VERSION);
    out[6]  = hdr->coll;
    out[7]  = hdr->dtype;
    out[8]  = hdr->op;
    out[9]  = hdr->phase;
    out[10] = hdr->algo;
    put32(out + 12, (uint32_t)hdr->src_rank);
    put64(out + 16, hdr->comm_id);
    put64(out + 24, hdr->op_seq);
    put64(out + 32, hdr->count);
    put64(out + 40, hdr->offset);
    put64(out + 48, hdr->length);
    put32(out + 56, hdr->step);
    put32(out + 60, (uint32_t)hdr->root);
}

fx_status fx_wire_decode(const uint8_t in[FX_WIRE_HDR_SIZE], struct fx_wire_hdr *hdr, char *err,
                         size_t errlen)
{
    hdr->magic   = get32(in + 0);
    hdr->version = get16(in + 4);
    if (hdr->magic != FX_WIRE_MAGIC) {
        snprintf(err, errlen, "message header has bad magic 0x%08x", hdr->magic);
        return FX_ERR_MISMATCH;
    }
    if (hdr->version != FX_WIRE_VERSION) {
        snprintf(err, errlen, "message header has protocol version %u, this rank speaks %u",
                 hdr->version, FX_WIRE_VERSION);
        return FX_ERR_MISMATCH;
    }
    hdr->coll     = in[6];
    hdr->dtype    = in[7];
    hdr->op       = in[8];
    hdr->phase    = in[9];
    hdr->algo     = in[10];
    hdr->src_rank = (int32_t)get32(in + 12);
    hdr->comm_id  = get64(in + 16);
    hdr->op_seq   = get64(in + 24);
    hdr->count    = get64(in + 32);
    hdr->offset   = get64(in + 40);
    hdr->length   = get64(in + 48);
    hdr->step     = get32(in + 56);
    hdr->root     = (int32_t)get32(in + 60);
    return FX_OK;
}

static const char *dtype_text(unsigned dt)
{
    const char *name = fx_datatype_name((fx_datatype)dt);

    return name != NULL ? name : "invalid";
}

static const char *op_text(unsigned op)
{
    const char *name = fx_op_name((fx_op)op);

    return name != NULL ? name : "none";
}

/* Both headers are point-to-point: the message's number is the pair's, the count the sender's. */
static fx_status check_p2p(const struct fx_wire_hdr *got, const struct fx_wire_hdr *want, int me,
                           char *err, size_t errlen)
{
    char which[96];
    int them = got->src_rank;

    snprintf(which, sizeof(which), "message #%llu from rank %d to rank %d",
             (unsigned long long)want->op_seq, them, me);
    if (got->op_seq != want->op_seq) {
        snprintf(err, errlen,
                 "send/recv: rank %d sent message #%llu to rank %d, which expected #%llu", them,
                 (unsigned long long)got->op_seq, me, (unsigned long long)want->op_seq);
    } else if (got->count != want->count) {
        snprintf(err, errlen,
                 "send/recv: rank %d sent count %llu, rank %d receives count %llu (%s)", them,
                 (unsigned long long)got->count, me, (unsigned long long)want->count, which);
    } else if (got->dtype != want->dtype) {
        snprintf(err, errlen,
                 "send/recv: rank %d sent datatype %s, rank %d receives datatype %s (%s)", them,
                 dtype_text(got->dtype), me, dtype_text(want->dtype), which);
    } else if (got->length != want->length || got->step != want->step) {
        snprintf(err, errlen,
                 "send/recv chunk layout differs: rank %d sent %llu elements as chunk %u, rank %d "
                 "expected %llu as chunk %u (%s)",
                 them, (unsigned long long)got->length, got->step, me,
                 (unsigned long long)want->length, want->step, which);
    } else {
        return FX_OK;
    }
    return FX_ERR_MISMATCH;
}

fx_status fx_wire_check(const struct fx_wire_hdr *got, const struct fx_wire_hdr *want, int me,
                        char *err, size_t errlen)
{
    bool p2p_got  = got->coll == FX_COLL_SENDRECV;
    bool p2p_want = want->coll == FX_COLL_SENDRECV;

    const char *coll = fx_coll_name(want->coll);
    int them         = got->src_rank;

    if (got->src_rank != want->src_rank) {
        snprintf(err, errlen,
                 "rank %d received a message claiming to be from rank %d, expected "
                 "rank %d",
                 me, them, want->src_rank);
    } else if (got->comm_id != want->comm_id) {
        snprintf(err, errlen, "message from rank %d belongs to another communicator", them);
    } else if (p2p_got != p2p_want) {
        /* Operation numbers count collectives and pairs' messages apart: compare the calls. */
        snprintf(err, errlen, "rank %d called %s, rank %d called %s", them, fx_coll_name(got->coll),
                 me, coll);
    } else if (p2p_want) {
        return check_p2p(got, want, me, err, errlen);
    } else if (got->op_seq != want->op_seq) {
        snprintf(err, errlen, "rank %d sent for operation #%llu while rank %d runs #%llu (%s)",
                 them, (unsigned long long)got->op_seq, me, (unsigned long long)want->op_seq, coll);
    } else if (got->coll != want->coll) {
        snprintf(err, errlen, "rank %d called %s, rank %d called %s (operation #%llu)", them,
                 fx_coll_name(got->coll), me, coll, (unsigned long long)want->op_seq);
    } else if (got->count != want->count) {
        snprintf(err, errlen, "%s count %llu on rank %d, rank %d passed %llu", coll,
                 (unsigned long long)got->count, them, me, (unsigned long long)want->count);
    } else if (got->dtype != want->dtype) {
        snprintf(err, errlen, "%s datatype %s on rank %d, rank %d passed %s", coll,
                 dtype_text(got->dtype), them, me, dtype_text(want->dtype));
    } else if (got->op != want->op) {
        snprintf(err, errlen, "%s op %s on rank %d, rank %d passed %s", coll, op_text(got->op),
                 them, me, op_text(want->op));
    } else if (got->root != want->root) {
        snprintf(err, errlen, "%s root %d on rank %d, rank %d passed %d", coll, got->root, them, me,
                 want->root);
    } else if (got->algo != want->algo) {
        snprintf(err, errlen, "%s algorithm %s on rank %d, %s on rank %d (operation #%llu)", coll,
                 fx_coll_algo_name(got->algo), them, fx_coll_algo_name(want->algo), me,
                 (unsigned long long)want->op_seq);
    } else if (got->length != want->length || got->phase != want->phase ||
               got->step != want->step) {
        snprintf(err, errlen,
                 "%s chunk layout differs: rank %d sent %llu elements at phase %u step %u, rank "
                 "%d expected %llu at phase %u step %u",
                 coll, them, (unsigned long long)got->length, got->phase, got->step, me,
                 (unsigned long long)want->length, want->phase, want->step);
    } else {
        return FX_OK;
    }
    return FX_ERR_MISMATCH;
}
