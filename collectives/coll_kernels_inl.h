/*
 * Reduction loop bodies, instantiated per kernel set: in coll_kernels.c for the baseline ISA,
 * in coll_kernels_avx2.c and coll_kernels_avx512.c with their ISA flags (which may supply their
 * own fp16, bf16 and fp8 kernels: KERNELS_HAVE_F16C, KERNELS_HAVE_BF16, KERNELS_HAVE_FP8). Define
 * KSUFFIX before including. The loops are written for the auto-vectoriser: no early exits, NaN
 * rules as selects. Both sets give bitwise identical results (same operations, same order, no
 * contraction).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "coll_kernels.h"
#include "coll_kernels_fp8_inl.h"

#define KCAT2(a, b) a##b
#define KCAT(a, b)  KCAT2(a, b)
#define KNAME(n)    KCAT(n, KSUFFIX)

#pragma GCC optimize("O3", "fp-contract=off")

/* Element pointers go through one-byte-aligned typedefs: the API takes any user buffer, and
 * x86 loads do not need alignment (the vectoriser then uses unaligned moves). */

/* Integer kernels: wrap via the unsigned type; MIN/MAX in the type's own signedness. */
#define INT_KERNELS(tag, T, UT)                                                                    \
    static void KNAME(tag##_sum)(void *d, const void *a, const void *b, size_t n)                  \
    {                                                                                              \
        typedef T ua_t __attribute__((aligned(1))); /* user buffers may be unaligned */            \
        ua_t *dd       = d;                                                                        \
        const ua_t *aa = a, *bb = b;                                                               \
        for (size_t i = 0; i < n; i++) {                                                           \
            dd[i] = (T)(UT)((UT)aa[i] + (UT)bb[i]);                                                \
        }                                                                                          \
    }                                                                                              \
    static void KNAME(tag##_prod)(void *d, const void *a, const void *b, size_t n)                 \
    {                                                                                              \
        typedef T ua_t __attribute__((aligned(1))); /* user buffers may be unaligned */            \
        ua_t *dd       = d;                                                                        \
        const ua_t *aa = a, *bb = b;                                                               \
        for (size_t i = 0; i < n; i++) {                                                           \
            dd[i] = (T)(UT)((UT)aa[i] * (UT)bb[i]);                                                \
        }                                                                                          \
    }                                                                                              \
    static void KNAME(tag##_min)(void *d, const void *a, const void *b, size_t n)                  \
    {                                                                                              \
        typedef T ua_t __attribute__((aligned(1))); /* user buffers may be unaligned */            \
        ua_t *dd       = d;                                                                        \
        const ua_t *aa = a, *bb = b;                                                               \
        for (size_t i = 0; i < n; i++) {                                                           \
            dd[i] = aa[i] < bb[i] ? aa[i] : bb[i];                                                 \
        }                                                                                          \
    }                                                                                              \
    static void KNAME(tag##_max)(void *d, const void *a, const void *b, size_t n)                  \
    {                                                                                              \
        typedef T ua_t __attribute__((aligned(1))); /* user buffers may be unaligned */            \
        ua_t *dd       = d;                                                                        \
        const ua_t *aa = a, *bb = b;                                                               \
        for (size_t i = 0; i < n; i++) {                                                           \
            dd[i] = aa[i] > bb[i] ? aa[i] : bb[i];                                                 \
        }                                                                                          \
    }

/* Floating point: MIN/MAX give a NaN operand when there is one (a's first). */
#define FMIN(x, y) ((x) != (x) ? (x) : ((y) != (y) ? (y) : ((x) < (y) ? (x) : (y))))
#define FMAX(x, y) ((x) != (x) ? (x) : ((y) != (y) ? (y) : ((x) > (y) ? (x) : (y))))

#define FLOAT_KERNELS(tag, T)                                                                      \
    static void KNAME(tag##_sum)(void *d, const void *a, const void *b, size_t n)                  \
    {                                                                                              \
        typedef T ua_t __attribute__((aligned(1))); /* user buffers may be unaligned */            \
        ua_t *dd       = d;                                                                        \
        const ua_t *aa = a, *bb = b;                                                               \
        for (size_t i = 0; i < n; i++) {                                                           \
            dd[i] = aa[i] + bb[i];                                                                 \
        }                                                                                          \
    }                                                                                              \
    static void KNAME(tag##_prod)(void *d, const void *a, const void *b, size_t n)                 \
    {                                                                                              \
        typedef T ua_t __attribute__((aligned(1))); /* user buffers may be unaligned */            \
        ua_t *dd       = d;                                                                        \
        const ua_t *aa = a, *bb = b;                                                               \
        for (size_t i = 0; i < n; i++) {                                                           \
            dd[i] = aa[i] * bb[i];                                                                 \
        }                                                                                          \
    }                                                                                              \
    static void KNAME(tag##_min)(void *d, const void *a, const void *b, size_t n)                  \
    {                                                                                              \
        typedef T ua_t __attribute__((aligned(1))); /* user buffers may be unaligned */            \
        ua_t *dd       = d;                                                                        \
        const ua_t *aa = a, *bb = b;                                                               \
        for (size_t i = 0; i < n; i++) {                                                           \
            dd[i] = FMIN(aa[i], bb[i]);                                                            \
        }                                                                                          \
    }                                                                                              \
    static void KNAME(tag##_max)(void *d, const void *a, const void *b, size_t n)                  \
    {                                                                                              \
        typedef T ua_t __attribute__((aligned(1))); /* user buffers may be unaligned */            \
        ua_t *dd       = d;                                                                        \
        const ua_t *aa = a, *bb = b;                                                               \
        for (size_t i = 0; i < n; i++) {                                                           \
            dd[i] = FMAX(aa[i], bb[i]);                                                            \
        }                                                                                          \
    }

INT_KERNELS(i8, int8_t, uint8_t)
INT_KERNELS(u8, uint8_t, uint8_t)
INT_KERNELS(i32, int32_t, uint32_t)
INT_KERNELS(u32, uint32_t, uint32_t)
INT_KERNELS(i64, int64_t, uint64_t)
INT_KERNELS(u64, uint64_t, uint64_t)
FLOAT_KERNELS(f32, float)
FLOAT_KERNELS(f64, double)

/* bf16 <-> fp32 as selects, so the loops vectorise; same results as fx_float_to_bf16. */
static inline float KNAME(bf_load)(uint16_t v)
{
    uint32_t u = (uint32_t)v << 16;
    float f;

    memcpy(&f, &u, sizeof(f));
    return f;
}

static inline uint16_t KNAME(bf_store)(float f)
{
    uint32_t x;
    uint32_t r;
    uint32_t q;

    memcpy(&x, &f, sizeof(x));
    r = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
    q = (x >> 16) | 0x40u;
    return (uint16_t)((x & 0x7fffffffu) > 0x7f800000u ? q : r);
}

#define LOWP_KERNEL(tag, opname, EXPR, LOAD, STORE, ET)                                            \
    static void KNAME(tag##_##opname)(void *d, const void *a, const void *b, size_t n)             \
    {                                                                                              \
        typedef ET ua_t __attribute__((aligned(1)));                                               \
        ua_t *dd       = d;                                                                        \
        const ua_t *aa = a, *bb = b;                                                               \
        for (size_t i = 0; i < n; i++) {                                                           \
            float x = LOAD(aa[i]);                                                                 \
            float y = LOAD(bb[i]);                                                                 \
            dd[i]   = STORE(EXPR);                                                                 \
        }                                                                                          \
    }

#define LOWP_KERNELS(tag, LOAD, STORE, ET)                                                         \
    LOWP_KERNEL(tag, sum, x + y, LOAD, STORE, ET)                                                  \
    LOWP_KERNEL(tag, prod, x *y, LOAD, STORE, ET)                                                  \
    LOWP_KERNEL(tag, min, FMIN(x, y), LOAD, STORE, ET)                                             \
    LOWP_KERNEL(tag, max, FMAX(x, y), LOAD, STORE, ET)

#ifndef KERNELS_HAVE_BF16
LOWP_KERNELS(bf16, KNAME(bf_load), KNAME(bf_store), uint16_t)
#endif
#ifndef KERNELS_HAVE_FP8
LOWP_KERNELS(e4m3, fx_fp8_e4m3_decode, fx_fp8_e4m3_encode, uint8_t)
LOWP_KERNELS(e5m2, fx_fp8_e5m2_decode, fx_fp8_e5m2_encode, uint8_t)
#endif
#ifndef KERNELS_HAVE_F16C
LOWP_KERNELS(f16, fx_half_to_float, fx_float_to_half, uint16_t)
#endif

#define KROW(tag)                                                                                  \
    {                                                                                              \
        KNAME(tag##_sum), KNAME(tag##_prod), KNAME(tag##_min), KNAME(tag##_max)                    \
    }

/* [datatype][SUM, PROD, MIN, MAX] */
static const fx_reduce_fn KNAME(table)[FX_NUM_DATATYPES][4] = {
    [FX_INT8] = KROW(i8),     [FX_UINT8] = KROW(u8),         [FX_INT32] = KROW(i32),
    [FX_UINT32] = KROW(u32),  [FX_INT64] = KROW(i64),        [FX_UINT64] = KROW(u64),
    [FX_FLOAT16] = KROW(f16), [FX_BFLOAT16] = KROW(bf16),    [FX_FLOAT32] = KROW(f32),
    [FX_FLOAT64] = KROW(f64), [FX_FLOAT8_E4M3] = KROW(e4m3), [FX_FLOAT8_E5M2] = KROW(e5m2),
};
