/* Kernel dispatch (scalar or AVX2+F16C, chosen once by CPUID), final reductions and AVG. */
#include <pthread.h>
#include <stdatomic.h>

#define KSUFFIX _scalar
#include "coll_kernels_inl.h"

static atomic_bool force_scalar;
static pthread_once_t detect_once = PTHREAD_ONCE_INIT;
static bool cpu_has_avx2;

static void detect(void)
{
    __builtin_cpu_init();
    cpu_has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
}

static const fx_reduce_fn (*kernels(void))[4]
{
    pthread_once(&detect_once, detect);
    if (cpu_has_avx2 && !atomic_load_explicit(&force_scalar, memory_order_relaxed)) {
        return fx_coll_kernels_avx2();
    }
    return table_scalar;
}

void fx_coll_kernels_force_scalar(bool force)
{
    atomic_store(&force_scalar, force);
}

const char *fx_coll_kernel_isa(void)
{
    return kernels() == table_scalar ? "scalar" : "avx2+f16c";
}

fx_reduce_fn fx_coll_reduce_fn(fx_datatype dtype, fx_op op)
{
    if ((unsigned)dtype >= FX_NUM_DATATYPES || (unsigned)op >= FX_NUM_OPS) {
        return NULL;
    }
    return kernels()[dtype][op == FX_AVG ? FX_SUM : op];
}

void fx_coll_reduce(void *dst, const void *a, const void *b, size_t n, fx_datatype dtype, fx_op op)
{
    fx_coll_reduce_fn(dtype, op)(dst, a, b, n);
}

/* The wrapped sum in T, divided by nranks in a type wide enough for nranks (WT: int64_t or
 * uint64_t), truncating. */
#define AVG_INT(T, UT, WT)                                                                         \
    do {                                                                                           \
        typedef T ua_t __attribute__((aligned(1))); /* user buffers may be unaligned */            \
        ua_t *dd       = dst;                                                                      \
        const ua_t *aa = a, *bb = b;                                                               \
        for (size_t i = 0; i < n; i++) {                                                           \
            dd[i] = (T)((WT)(T)(UT)((UT)aa[i] + (UT)bb[i]) / (WT)nranks);                          \
        }                                                                                          \
    } while (0)

#define AVG_FLOAT(T)                                                                               \
    do {                                                                                           \
        typedef T ua_t __attribute__((aligned(1))); /* user buffers may be unaligned */            \
        ua_t *dd       = dst;                                                                      \
        const ua_t *aa = a, *bb = b;                                                               \
        for (size_t i = 0; i < n; i++) {                                                           \
            dd[i] = (aa[i] + bb[i]) / (T)nranks;                                                   \
        }                                                                                          \
    } while (0)

#define AVG_LOWP(LOAD, STORE, ET)                                                                  \
    do {                                                                                           \
        typedef ET ua_t __attribute__((aligned(1)));                                               \
        ua_t *dd       = dst;                                                                      \
        const ua_t *aa = a, *bb = b;                                                               \
        for (size_t i = 0; i < n; i++) {                                                           \
            dd[i] = STORE((LOAD(aa[i]) + LOAD(bb[i])) / (float)nranks);                            \
        }                                                                                          \
    } while (0)

/* dst = (a + b) / nranks; fp16/bf16/fp8 computed in fp32 and rounded once. */
static void reduce_avg(void *dst, const void *a, const void *b, size_t n, fx_datatype dtype,
                       int nranks)
{
    switch (dtype) {
    case FX_INT8:
        AVG_INT(int8_t, uint8_t, int64_t);
        break;
    case FX_UINT8:
        AVG_INT(uint8_t, uint8_t, uint64_t);
        break;
    case FX_INT32:
        AVG_INT(int32_t, uint32_t, int64_t);
        break;
    case FX_UINT32:
        AVG_INT(uint32_t, uint32_t, uint64_t);
        break;
    case FX_INT64:
        AVG_INT(int64_t, uint64_t, int64_t);
        break;
    case FX_UINT64:
        AVG_INT(uint64_t, uint64_t, uint64_t);
        break;
    case FX_FLOAT16:
        AVG_LOWP(fx_half_to_float, fx_float_to_half, uint16_t);
        break;
    case FX_BFLOAT16:
        AVG_LOWP(fx_bf16_to_float, fx_float_to_bf16, uint16_t);
        break;
    case FX_FLOAT8_E4M3:
        AVG_LOWP(fx_e4m3_to_float, fx_float_to_e4m3, uint8_t);
        break;
    case FX_FLOAT8_E5M2:
        AVG_LOWP(fx_e5m2_to_float, fx_float_to_e5m2, uint8_t);
        break;
    case FX_FLOAT32:
        AVG_FLOAT(float);
        break;
    default:
        AVG_FLOAT(double);
        break;
    }
}

void fx_coll_reduce_final(void *dst, const void *a, const void *b, size_t n, fx_datatype dtype,
                          fx_op op, int nranks)
{
    if (op == FX_AVG && nranks > 1) {
        reduce_avg(dst, a, b, n, dtype, nranks);
    } else {
        fx_coll_reduce(dst, a, b, n, dtype, op);
    }
}

void fx_coll_avg_scale(void *buf, size_t n, fx_datatype dtype, int nranks)
{
    size_t es       = fx_datatype_size(dtype);
    uint8_t zero[8] = {0};

    if (nranks <= 1) {
        return;
    }
    /* x / nranks == (x + 0) / nranks, element by element. */
    for (size_t i = 0; i < n; i++) {
        uint8_t *p = (uint8_t *)buf + i * es;

        if (dtype == FX_FLOAT16 || dtype == FX_BFLOAT16) {
            uint16_t z = 0x8000; /* -0: x + (-0) == x for every x, -0 + -0 stays -0 */

            reduce_avg(p, p, &z, 1, dtype, nranks);
        } else if (dtype == FX_FLOAT8_E4M3 || dtype == FX_FLOAT8_E5M2) {
            uint8_t z = 0x80;

            reduce_avg(p, p, &z, 1, dtype, nranks);
        } else if (dtype == FX_FLOAT32 || dtype == FX_FLOAT64) {
            uint8_t nz[8] = {0};

            nz[es - 1] = 0x80;
            reduce_avg(p, p, nz, 1, dtype, nranks);
        } else {
            reduce_avg(p, p, zero, 1, dtype, nranks);
        }
    }
}
