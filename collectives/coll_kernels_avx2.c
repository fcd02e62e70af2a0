/* The AVX2+F16C kernel set: the shared loops compiled for AVX2, and fp16 through F16C. */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "coll_kernels.h"

/* fp16 via the F16C conversions, 8 lanes at a time; the tail goes through the same
 * instructions on a zero-padded copy, so every element is rounded alike. */
#define F16C_KERNEL(opname, VEXPR)                                                                 \
    static void f16_##opname##_avx2(void *d, const void *a, const void *b, size_t n)               \
    {                                                                                              \
        uint16_t *dd       = d;                                                                    \
        const uint16_t *aa = a, *bb = b;                                                           \
        size_t i = 0;                                                                              \
        for (; i + 8 <= n; i += 8) {                                                               \
            __m256 x = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(aa + i)));                \
            __m256 y = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(bb + i)));                \
            _mm_storeu_si128((__m128i *)(dd + i),                                                  \
                             _mm256_cvtps_ph(VEXPR, _MM_FROUND_TO_NEAREST_INT));                   \
        }                                                                                          \
        if (i < n) {                                                                               \
            uint16_t ta[8] = {0}, tb[8] = {0}, td[8];                                              \
            memcpy(ta, aa + i, (n - i) * 2);                                                       \
            memcpy(tb, bb + i, (n - i) * 2);                                                       \
            __m256 x = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)ta));                      \
            __m256 y = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)tb));                      \
            _mm_storeu_si128((__m128i *)td, _mm256_cvtps_ph(VEXPR, _MM_FROUND_TO_NEAREST_INT));    \
            memcpy(dd + i, td, (n - i) * 2);                                                       \
        }                                                                                          \
    }

/* NaN-propagating min/max: where x is NaN take x, else where y is NaN take y. */
static inline __m256 vmin_nan(__m256 x, __m256 y)
{
    __m256 m = _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, y, _CMP_LT_OQ));

    m = _mm256_blendv_ps(m, y, _mm256_cmp_ps(y, y, _CMP_UNORD_Q));
    return _mm256_blendv_ps(m, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

static inline __m256 vmax_nan(__m256 x, __m256 y)
{
    __m256 m = _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, y, _CMP_GT_OQ));

    m = _mm256_blendv_ps(m, y, _mm256_cmp_ps(y, y, _CMP_UNORD_Q));
    return _mm256_blendv_ps(m, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

F16C_KERNEL(sum, _mm256_add_ps(x, y))
F16C_KERNEL(prod, _mm256_mul_ps(x, y))
F16C_KERNEL(min, vmin_nan(x, y))
F16C_KERNEL(max, vmax_nan(x, y))

#define KSUFFIX           _avx2
#define KERNELS_HAVE_F16C 1

#include "coll_kernels_inl.h"

const fx_reduce_fn (*fx_coll_kernels_avx2(void))[4]
{
    return table_avx2;
}

/* An fp32 a[i] += b[i] loop in this ISA: the bandwidth baseline fx-kernels compares against. */
void fx_coll_stream_add_avx2(float *a, const float *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        a[i] += b[i];
    }
}
