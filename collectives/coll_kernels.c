/* Kernel dispatch (scalar, AVX2+F16C, AVX-512 or AVX-512 FP16, chosen by CPUID or FX_KERNELS),
 * final reductions and AVG. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#define KSUFFIX _scalar
#include "coll_kernels_inl.h"

static atomic_int chosen          = FX_KSET_AUTO;
static pthread_once_t detect_once = PTHREAD_ONCE_INIT;
static const char *missing[FX_KSET_COUNT]; /* the first CPU feature a set lacks, NULL if none */
static fx_reduce_fn table_fp16[FX_NUM_DATATYPES][4]; /* the AVX-512 FP16 set, built by detect */
static fx_avg_fn avg_fp16[FX_NUM_DATATYPES];         /* its AVG kernels, likewise */

static void detect(void)
{
    const char *m;

    /* __builtin_cpu_supports takes string literals only: one test per feature. */
    __builtin_cpu_init();
    m                           = !__builtin_cpu_supports("avx2")   ? "avx2"
                                  : !__builtin_cpu_supports("f16c") ? "f16c"
                                  : !__builtin_cpu_supports("fma")  ? "fma"
                                                                    : NULL;
    missing[FX_KSET_AVX2]       = m;
    m                           = m != NULL                             ? m
                                  : !__builtin_cpu_supports("avx512f")  ? "avx512f"
                                  : !__builtin_cpu_supports("avx512bw") ? "avx512bw"
                                  : !__builtin_cpu_supports("avx512vl") ? "avx512vl"
                                                                        : NULL;
    missing[FX_KSET_AVX512]     = m;
    m                           = m != NULL                               ? m
                                  : !__builtin_cpu_supports("avx512fp16") ? "avx512fp16"
                                  : !__builtin_cpu_supports("avx512vbmi") ? "avx512vbmi"
                                                                          : NULL;
    missing[FX_KSET_AVX512FP16] = m;
    if (m == NULL) {
        memcpy(table_fp16, fx_coll_kernels_avx512(), sizeof(table_fp16));
        fx_coll_kernels_avx512fp16_patch(table_fp16);
        memcpy(avg_fp16, fx_coll_avg_avx512(), sizeof(avg_fp16));
        fx_coll_kernels_avx512fp16_avg_patch(avg_fp16);
    }
}

/* The set auto picks: the widest this CPU has. */
static enum fx_coll_kset best(void)
{
    if (missing[FX_KSET_AVX512FP16] == NULL) {
        return FX_KSET_AVX512FP16;
    }
    if (missing[FX_KSET_AVX512] == NULL) {
        return FX_KSET_AVX512;
    }
    return missing[FX_KSET_AVX2] == NULL ? FX_KSET_AVX2 : FX_KSET_SCALAR;
}

static enum fx_coll_kset current(void)
{
    enum fx_coll_kset set;

    pthread_once(&detect_once, detect);
    set = (enum fx_coll_kset)atomic_load_explicit(&chosen, memory_order_relaxed);
    return set == FX_KSET_AUTO ? best() : set;
}

static const fx_reduce_fn (*kernels(void))[4]
{
    switch (current()) {
    case FX_KSET_AVX512FP16:
        return (const fx_reduce_fn(*)[4])table_fp16;
    case FX_KSET_AVX512:
        return fx_coll_kernels_avx512();
    case FX_KSET_AVX2:
        return fx_coll_kernels_avx2();
    default:
        return table_scalar;
    }
}

static const char *const kset_names[FX_KSET_COUNT] = {[FX_KSET_AUTO]       = "auto",
                                                      [FX_KSET_SCALAR]     = "scalar",
                                                      [FX_KSET_AVX2]       = "avx2",
                                                      [FX_KSET_AVX512]     = "avx512",
                                                      [FX_KSET_AVX512FP16] = "avx512fp16"};

bool fx_coll_kset_parse(const char *s, enum fx_coll_kset *out)
{
    for (int i = 0; i < FX_KSET_COUNT; i++) {
        if (s != NULL && strcmp(s, kset_names[i]) == 0) {
            *out = (enum fx_coll_kset)i;
            return true;
        }
    }
    return false;
}

bool fx_coll_kset_available(enum fx_coll_kset set)
{
    pthread_once(&detect_once, detect);
    return (unsigned)set < FX_KSET_COUNT && missing[set] == NULL;
}

fx_status fx_coll_kernels_select(enum fx_coll_kset set, char *err, size_t errlen)
{
    if ((unsigned)set >= FX_KSET_COUNT) {
        snprintf(err, errlen, "kernel set %d is not one of auto, scalar, avx2, avx512, avx512fp16",
                 (int)set);
        return FX_ERR_INVALID_ARG;
    }
    pthread_once(&detect_once, detect);
    if (missing[set] != NULL) {
        snprintf(err, errlen, "FX_KERNELS=%s: this CPU lacks %s", kset_names[set], missing[set]);
        return FX_ERR_UNSUPPORTED;
    }
    atomic_store(&chosen, (int)set);
    return FX_OK;
}

const char *fx_coll_kernel_isa(void)
{
    return kset_names[current()];
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

/* The set's vector AVG kernel for dtype, NULL where it has none. */
static fx_avg_fn avg_kernel(fx_datatype dtype)
{
    if ((unsigned)dtype >= FX_NUM_DATATYPES) {
        return NULL;
    }
    switch (current()) {
    case FX_KSET_AVX512FP16:
        return avg_fp16[dtype];
    case FX_KSET_AVX512:
        return fx_coll_avg_avx512()[dtype];
    case FX_KSET_AVX2:
        return fx_coll_avg_avx2()[dtype];
    default:
        return NULL;
    }
}

void fx_coll_reduce_final(void *dst, const void *a, const void *b, size_t n, fx_datatype dtype,
                          fx_op op, int nranks)
{
    fx_avg_fn avg = op == FX_AVG && nranks > 1 ? avg_kernel(dtype) : NULL;

    if (avg != NULL) {
        avg(dst, a, b, n, (float)nranks);
    } else if (op == FX_AVG && nranks > 1) {
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

/* The fx-kernels baseline for the scalar set, compiled like the scalar kernels. */
void fx_coll_stream_add_scalar(float *a, const float *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        a[i] += b[i];
    }
}

fx_stream_add_fn fx_coll_stream_add(void)
{
    switch (current()) {
    case FX_KSET_AVX512FP16:
    case FX_KSET_AVX512:
        return fx_coll_stream_add_avx512;
    case FX_KSET_AVX2:
        return fx_coll_stream_add_avx2;
    default:
        return fx_coll_stream_add_scalar;
    }
}
