/*
 * Reference data for the integration tests: what each rank contributes to a collective and what
 * the result must be, computed independently of the library.
 *
 * Contributions are chosen so that every reduction is exact in every datatype: integers take any
 * value (SUM and PROD wrap like C unsigned arithmetic, MIN and MAX compare in the type's
 * signedness, AVG is the wrapped sum divided by nranks, truncating); floating-point values are
 * small (SUM/AVG: multiples of 0.5 in [-2, 2]; PROD: 1, -1, 2, 0.5; MIN/MAX: integers in
 * [-120, 120]) so that sums and products of up to 16 ranks are exact even in fp16 and bf16. fp8
 * SUM/AVG contributions are -1, 0 or 1, and fp8 results are exact up to 8 ranks (e5m2 holds every
 * integer up to 8; e4m3 every power of two from 2^-8 to 2^8); MIN/MAX values are rounded to fp8
 * when stored, which keeps their order. Only FX_AVG rounds: the exact sum divided by nranks in
 * fp32 (fp64 for FX_FLOAT64), then rounded once to nearest-even for fp16, bf16 and fp8.
 */
#ifndef FX_TEST_REFDATA_H
#define FX_TEST_REFDATA_H

#include <stddef.h>
#include <stdint.h>

#include "fabricx.h"

/* One collective call as every rank makes it; seed varies the data between calls. */
struct ref_case {
    fx_datatype dt;
    fx_op op;
    size_t count;
    int nranks;
    uint64_t seed;
};

size_t ref_dt_size(fx_datatype dt);
const char *ref_dt_name(fx_datatype dt);
const char *ref_op_name(fx_op op);

/* Round-to-nearest-even conversions from binary32, NaN kept quiet, overflow to infinity. */
uint16_t ref_f32_to_f16(float f);
uint16_t ref_f32_to_bf16(float f);
/* Nearest-even to OCP fp8: e4m3 saturates at +-448 (infinities too), e5m2 overflows to inf. */
uint8_t ref_f32_to_e4m3(float f);
uint8_t ref_f32_to_e5m2(float f);
double ref_f16_to_double(uint16_t h);

/* A well-mixed 64-bit value for (seed, rank, index). */
uint64_t ref_bits(uint64_t seed, int rank, size_t i);
uint64_t ref_mix(uint64_t x);

/* Fills buf (count elements) with rank's allreduce contribution. */
void ref_fill(const struct ref_case *k, int rank, void *buf);

/* Writes the exact allreduce result to out; scratch holds count 8-byte values. */
void ref_expect(const struct ref_case *k, void *out, void *scratch);

/* Number of elements where got and want differ bitwise; the first is described in first. */
size_t ref_compare(const struct ref_case *k, const void *got, const void *want, char *first,
                   size_t len);

/* MIN/MAX with NaN: 1 when rank puts a NaN at index i (some indices get one from every rank). */
int ref_nan_at(const struct ref_case *k, int rank, size_t i);
void ref_inject_nan(const struct ref_case *k, int rank, void *buf);

/* As ref_compare, but where any rank put a NaN the result must be a NaN (any NaN). */
size_t ref_compare_nan(const struct ref_case *k, const void *got, const void *want, char *first,
                       size_t len);

/* Allgather: rank's sendcount elements of raw bits, and the check of the gathered buffer. */
void ref_fill_gather(const struct ref_case *k, int rank, void *buf);
size_t ref_check_gather(const struct ref_case *k, const void *recv, char *first, size_t len);

#endif /* FX_TEST_REFDATA_H */
