/*
 * Reduction kernels for every datatype and operator, and the datatype table.
 * Pure functions over memory; selected per process by CPU features or FX_KERNELS (scalar,
 * AVX2+F16C, AVX-512 or AVX-512 FP16), never with -march=native in the installed library.
 *
 * Semantics (the tests' reference):
 *  - integers: SUM and PROD wrap like C unsigned arithmetic; MIN/MAX in the type's signedness;
 *  - floats: MIN/MAX return NaN if either operand is NaN;
 *  - fp16/bf16/fp8: operands widened to fp32, the result rounded to nearest-even once (e4m3
 *    saturates to +-448, e5m2 overflows to infinity);
 *  - AVG: SUM here; the division by nranks is applied by fx_coll_reduce_final();
 *  - a NaN result is a quiet NaN whose payload may differ between kernel sets (ranks still
 *    agree: each element's final value is computed on one rank and distributed).
 */
#ifndef FX_COLL_KERNELS_H
#define FX_COLL_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fabricx.h"

/* dst[i] = a[i] (op) b[i] for i < n. dst may be the same memory as a or b (not overlapping
 * partially). */
typedef void (*fx_reduce_fn)(void *dst, const void *a, const void *b, size_t n);

/* The kernel for a valid (dtype, op); FX_AVG gives the SUM kernel. NULL when invalid. */
fx_reduce_fn fx_coll_reduce_fn(fx_datatype dtype, fx_op op);

/* dst = a (op) b as fx_coll_reduce_fn. */
void fx_coll_reduce(void *dst, const void *a, const void *b, size_t n, fx_datatype dtype, fx_op op);

/*
 * The last reduction of an element: dst = a (op) b, then for FX_AVG divided by nranks with a
 * single rounding for fp16/bf16/fp8 (fp32 sum / nranks, rounded once); integer AVG truncates the
 * wrapped sum in the type's signedness. For other ops identical to fx_coll_reduce.
 */
void fx_coll_reduce_final(void *dst, const void *a, const void *b, size_t n, fx_datatype dtype,
                          fx_op op, int nranks);

/* buf[i] /= nranks (FX_AVG on a single rank or after a copy); no-op for nranks 1. */
void fx_coll_avg_scale(void *buf, size_t n, fx_datatype dtype, int nranks);

/* The kernel sets, as FX_KERNELS names them: auto picks the widest this CPU runs. */
enum fx_coll_kset {
    FX_KSET_AUTO,
    FX_KSET_SCALAR,
    FX_KSET_AVX2,       /* AVX2, F16C, FMA */
    FX_KSET_AVX512,     /* AVX-512 F, BW and VL (and the AVX2 set's features) */
    FX_KSET_AVX512FP16, /* AVX-512 FP16 and VBMI (and the AVX-512 set's features) */
    FX_KSET_COUNT
};

/* Parses "auto", "scalar", "avx2", "avx512" or "avx512fp16" into *out; false for anything
 * else. */
bool fx_coll_kset_parse(const char *s, enum fx_coll_kset *out);
/* Whether this CPU has every feature of set (auto and scalar: always). */
bool fx_coll_kset_available(enum fx_coll_kset set);
/*
 * Makes set the kernel set of the process (the core calls it at communicator init for
 * FX_KERNELS; tests and fx-kernels compare sets). Returns FX_OK, FX_ERR_UNSUPPORTED when the
 * CPU lacks a feature of set (err names it), or FX_ERR_INVALID_ARG for an unknown set.
 */
fx_status fx_coll_kernels_select(enum fx_coll_kset set, char *err, size_t errlen);
/* Name of the kernel set in use: "scalar", "avx2", "avx512" or "avx512fp16". */
const char *fx_coll_kernel_isa(void);

/* The AVX2+F16C and AVX-512 tables [datatype][SUM, PROD, MIN, MAX]
 * (coll_kernels_avx2.c, coll_kernels_avx512.c); call only where the CPU has the features. */
const fx_reduce_fn (*fx_coll_kernels_avx2(void))[4];
const fx_reduce_fn (*fx_coll_kernels_avx512(void))[4];
/*
 * The last step of FX_AVG for one datatype: dst[i] = (a[i] + b[i]) / div with div =
 * (float)nranks, as fx_coll_reduce_final defines it. fx_coll_avg_avx2 and fx_coll_avg_avx512
 * give them per datatype, NULL where the set has none (the generic code then runs).
 */
typedef void (*fx_avg_fn)(void *dst, const void *a, const void *b, size_t n, float div);
const fx_avg_fn *fx_coll_avg_avx2(void);
const fx_avg_fn *fx_coll_avg_avx512(void);
/* Replaces the entries of a copy of the AVX-512 table that binary16 arithmetic computes
 * faster (coll_kernels_avx512fp16.c); call only where the CPU has AVX-512 FP16. */
void fx_coll_kernels_avx512fp16_patch(fx_reduce_fn table[FX_NUM_DATATYPES][4]);
/* Likewise for a copy of the AVX-512 AVG kernels. */
void fx_coll_kernels_avx512fp16_avg_patch(fx_avg_fn avg[FX_NUM_DATATYPES]);

/* a[i] += b[i] in fp32, compiled for one ISA as its kernels are: the fair bandwidth baseline
 * of fx-kernels. fx_coll_stream_add returns the one of the kernel set in use. */
typedef void (*fx_stream_add_fn)(float *a, const float *b, size_t n);
void fx_coll_stream_add_scalar(float *a, const float *b, size_t n);
void fx_coll_stream_add_avx2(float *a, const float *b, size_t n);
void fx_coll_stream_add_avx512(float *a, const float *b, size_t n);
fx_stream_add_fn fx_coll_stream_add(void);

/*
 * Software prefetch of both inputs this many bytes ahead, at the top of each vector loop: the
 * hardware prefetchers alone leave the kernels short of the bandwidth a plain fp32 loop gets
 * (measured with fx-kernels on arrays larger than the last-level cache).
 */
#define FX_COLL_PREFETCH_BYTES 4096

static inline void fx_coll_prefetch2(const void *a, const void *b)
{
    __builtin_prefetch((const void *)((uintptr_t)a + FX_COLL_PREFETCH_BYTES), 0, 3);
    __builtin_prefetch((const void *)((uintptr_t)b + FX_COLL_PREFETCH_BYTES), 0, 3);
}

/* Scalar conversions (round to nearest-even, NaN kept quiet, overflow to infinity). */
float fx_half_to_float(uint16_t h);
uint16_t fx_float_to_half(float f);
float fx_bf16_to_float(uint16_t b);
uint16_t fx_float_to_bf16(float f);
/* OCP fp8: e4m3 saturates to +-448 (infinities too), e5m2 overflows to infinity; NaN stays NaN. */
float fx_e4m3_to_float(uint8_t v);
uint8_t fx_float_to_e4m3(float f);
float fx_e5m2_to_float(uint8_t v);
uint8_t fx_float_to_e5m2(float f);

#endif /* FX_COLL_KERNELS_H */
