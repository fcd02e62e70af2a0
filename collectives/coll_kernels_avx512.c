/* The AVX-512 (F, BW, VL) kernel set: the shared loops compiled for 512-bit vectors, and fp16
 * through the AVX-512F half conversions with masked tails. */
#include <immintrin.h>
#include <stdint.h>

#include "coll_kernels.h"

/* fp16, 16 lanes at a time; the tail is a masked load and store through the same instructions,
 * so every element is rounded alike. */
#define F16_512_KERNEL(opname, VEXPR)                                                              \
    static void f16_##opname##_avx512(void *d, const void *a, const void *b, size_t n)             \
    {                                                                                              \
        uint16_t *dd       = d;                                                                    \
        const uint16_t *aa = a, *bb = b;                                                           \
        size_t i = 0;                                                                              \
        for (; i + 16 <= n; i += 16) {                                                             \
            __m512 x = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(aa + i)));             \
            __m512 y = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(bb + i)));             \
            _mm256_storeu_si256((__m256i *)(dd + i),                                               \
                                _mm512_cvtps_ph(VEXPR, _MM_FROUND_TO_NEAREST_INT));                \
        }                                                                                          \
        if (i < n) {                                                                               \
            __mmask16 k = (__mmask16)((1u << (n - i)) - 1);                                        \
            __m512 x    = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, aa + i));                    \
            __m512 y    = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, bb + i));                    \
            _mm256_mask_storeu_epi16(dd + i, k,                                                    \
                                     _mm512_cvtps_ph(VEXPR, _MM_FROUND_TO_NEAREST_INT));           \
        }                                                                                          \
    }

/* NaN-propagating min/max: where x is NaN take x, else where y is NaN take y. */
static inline __m512 vmin_nan(__m512 x, __m512 y)
{
    __m512 m = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, y, _CMP_LT_OQ), y, x);

    m = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(y, y, _CMP_UNORD_Q), m, y);
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), m, x);
}

static inline __m512 vmax_nan(__m512 x, __m512 y)
{
    __m512 m = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, y, _CMP_GT_OQ), y, x);

    m = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(y, y, _CMP_UNORD_Q), m, y);
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), m, x);
}

F16_512_KERNEL(sum, _mm512_add_ps(x, y))
F16_512_KERNEL(prod, _mm512_mul_ps(x, y))
F16_512_KERNEL(min, vmin_nan(x, y))
F16_512_KERNEL(max, vmax_nan(x, y))

#define KSUFFIX           _avx512
#define KERNELS_HAVE_F16C 1

#include "coll_kernels_inl.h"

const fx_reduce_fn (*fx_coll_kernels_avx512(void))[4]
{
    return table_avx512;
}

/* An fp32 a[i] += b[i] loop in this ISA: the bandwidth baseline fx-kernels compares against. */
void fx_coll_stream_add_avx512(float *a, const float *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        a[i] += b[i];
    }
}
