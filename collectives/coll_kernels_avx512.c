/* The AVX-512 (F, BW, VL) kernel set: the shared loops compiled for 512-bit vectors, and
 * explicit fp16, bf16 and fp8 kernels (SUM, PROD, AVG; MIN and MAX as integer compares) with
 * masked tails. */
#include <immintrin.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

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
            fx_coll_prefetch2(aa + i, bb + i);                                                     \
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

F16_512_KERNEL(sum, _mm512_add_ps(x, y))
F16_512_KERNEL(prod, _mm512_mul_ps(x, y))

/* 32-bit lanes all set to v. */
static inline __m512i vset(uint32_t v)
{
    return _mm512_set1_epi32((int)v);
}

/*
 * fp8 SUM, PROD and AVG, 64 lanes at a time with no byte shuffle, as the AVX2 set does: each
 * 16-bit lane holds an even code in its low byte and an odd one in its high byte, and a shift or
 * a mask makes each a binary16 (e5m2 is the top byte of one; e4m3 its value times 2^-8, one bit
 * lower, as in coll_kernels_avx512fp16.c), converted to fp32 exactly, the op in fp32, the result
 * rounded to binary16 and from there to fp8 to nearest-even in 16-bit lanes. SUM, PROD and AVG over
 * 2^e ranks (e up to 8 for e5m2, 7 for e4m3) round to binary16 to nearest-even, as the AVX2 set
 * does (coll_kernels_avx2.c says why the bits are those of one rounding from fp32). AVG over
 * other or more ranks rounds to binary16 to odd (toward zero, then the lsb set where that was
 * inexact): rounding to odd and then to nearest gives the nearest when the first format keeps at
 * least two more bits, and binary16 keeps 7 or more below fp8's lsb everywhere, subnormals
 * included; toward zero it stops at 65504, which e5m2 rounds to infinity as it would the fp32
 * value. The unit tests check every pair of codes.
 */
static inline __m512i w16(int v)
{
    return _mm512_set1_epi16((short)v);
}

static inline __m512i even_e5m2(__m512i w)
{
    return _mm512_slli_epi16(w, 8);
}

static inline __m512i odd_e5m2(__m512i w)
{
    return _mm512_and_si512(w, w16((short)0xff00));
}

/* sign to bit 15, magnitude to bits 13..7 */
static inline __m512i odd_e4m3(__m512i w)
{
    return _mm512_and_si512(_mm512_srai_epi16(w, 1), w16((short)0xbf80));
}

static inline __m512i even_e4m3(__m512i w)
{
    return odd_e4m3(_mm512_slli_epi16(w, 8));
}

/* 16 fp32 values to binary16, rounded to nearest-even. */
static inline __m256i rne16(__m512 r)
{
    return _mm512_cvtps_ph(r, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

/* 16 fp32 values to binary16, rounded to odd (a NaN stays a NaN). */
static inline __m256i ro16(__m512 r)
{
    __m256i h     = _mm512_cvtps_ph(r, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    __mmask16 inx = _mm512_cmp_ps_mask(_mm512_cvtph_ps(h), r, _CMP_NEQ_UQ);

    return _mm256_mask_mov_epi16(h, inx, _mm256_or_si256(h, _mm256_set1_epi16(1)));
}

/* To nearest-even on the low 8 bits: the e5m2 code in the high byte. A NaN from fp8 operands has
 * at most its lsb set in the low byte (set by the rounding to odd), so no carry leaves it. */
static inline __m512i enc16_e5m2(__m512i h)
{
    __m512i t = _mm512_add_epi16(h, w16(0x7f));

    return _mm512_mask_add_epi16(t, _mm512_test_epi16_mask(h, w16(0x100)), t, w16(1));
}

/* From value * 2^-8: saturate the magnitude at 448 (0x3f00 here), round the low 7 bits to
 * nearest-even, move the magnitude up one bit under the sign: the e4m3 code in the high byte. */
static inline __m512i enc16_e4m3(__m512i h)
{
    __m512i m = _mm512_min_epu16(_mm512_and_si512(h, w16(0x7fff)), w16(0x3f00));
    __m512i t = _mm512_add_epi16(m, w16(0x3f));

    t = _mm512_mask_add_epi16(t, _mm512_test_epi16_mask(m, w16(0x80)), t, w16(1));
    return _mm512_ternarylogic_epi32(_mm512_slli_epi16(t, 1), h, w16(0x8000), 0xd8);
}

/* e4m3 has no infinity: a result is NaN exactly when an operand is (S.1111.111). */
static inline __m512i nan8_e4m3(__m512i r, __m512i x, __m512i y)
{
    __m512i top    = _mm512_set1_epi8((char)0x80);
    __m512i ones   = _mm512_set1_epi8((char)0xff);
    __mmask64 ok_x = _mm512_cmpneq_epi8_mask(_mm512_or_si512(x, top), ones);
    __mmask64 ok   = _mm512_mask_cmpneq_epi8_mask(ok_x, _mm512_or_si512(y, top), ones);

    return _mm512_mask_mov_epi8(_mm512_set1_epi8(0x7f), ok, r);
}

static inline __m512i nan8_e5m2(__m512i r, __m512i x, __m512i y)
{
    (void)x;
    (void)y;
    return r;
}

/* The ops of the fp8 kernels; v is the AVG divisor or its reciprocal. */
static inline __m512 add_ps(__m512 x, __m512 y, __m512 v)
{
    (void)v;
    return _mm512_add_ps(x, y);
}

static inline __m512 mul_ps(__m512 x, __m512 y, __m512 v)
{
    (void)v;
    return _mm512_mul_ps(x, y);
}

/* Both operands are value * 2^-8: rescale one so the product is value * 2^-8 again. */
static inline __m512 mul_e4m3(__m512 x, __m512 y, __m512 v)
{
    (void)v;
    return _mm512_mul_ps(x, _mm512_mul_ps(y, _mm512_set1_ps(256.0f)));
}

/* AVG: the fp32 sum is exact or the reference's own rounding, and scaling by 2^-8 commutes with
 * the division (no fp32 subnormal is reached from fp8 operands). */
static inline __m512 avg_mul(__m512 x, __m512 y, __m512 v)
{
    return _mm512_mul_ps(_mm512_add_ps(x, y), v);
}

static inline __m512 avg_div(__m512 x, __m512 y, __m512 v)
{
    return _mm512_div_ps(_mm512_add_ps(x, y), v);
}

/* 32 codes of each operand, as binary16 in 16-bit lanes, through OP; 16-bit lanes with the
 * result codes in their high bytes. */
#define FP8_512_HALF(fmt, opname, OP, TO16)                                                        \
    static inline __m512i fmt##_##opname##_half(__m512i hx, __m512i hy, __m512 v)                  \
    {                                                                                              \
        __m512 xl  = _mm512_cvtph_ps(_mm512_castsi512_si256(hx));                                  \
        __m512 xh  = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(hx, 1));                            \
        __m512 yl  = _mm512_cvtph_ps(_mm512_castsi512_si256(hy));                                  \
        __m512 yh  = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(hy, 1));                            \
        __m256i rl = TO16(OP(xl, yl, v));                                                          \
        __m256i rh = TO16(OP(xh, yh, v));                                                          \
        return enc16_##fmt(_mm512_inserti64x4(_mm512_castsi256_si512(rl), rh, 1));                 \
    }

#define FP8_512_BLOCK(fmt, opname, OP, TO16)                                                       \
    FP8_512_HALF(fmt, opname, OP, TO16)                                                            \
    static inline void fmt##_##opname##_block(uint8_t *d, const uint8_t *a, const uint8_t *b,      \
                                              __mmask64 k, __m512 v)                               \
    {                                                                                              \
        __m512i x  = _mm512_maskz_loadu_epi8(k, a);                                                \
        __m512i y  = _mm512_maskz_loadu_epi8(k, b);                                                \
        __m512i te = fmt##_##opname##_half(even_##fmt(x), even_##fmt(y), v);                       \
        __m512i to = fmt##_##opname##_half(odd_##fmt(x), odd_##fmt(y), v);                         \
        /* odd codes keep their high byte, even ones move down: select by 0xff00 */                \
        __m512i r =                                                                                \
            _mm512_ternarylogic_epi32(to, _mm512_srli_epi16(te, 8), w16((short)0xff00), 0xe4);     \
        _mm512_mask_storeu_epi8(d, k, nan8_##fmt(r, x, y));                                        \
    }                                                                                              \
    static void fmt##_##opname##_loop(uint8_t *dd, const uint8_t *aa, const uint8_t *bb, size_t n, \
                                      __m512 v)                                                    \
    {                                                                                              \
        size_t i = 0;                                                                              \
        for (; i + 64 <= n; i += 64) {                                                             \
            fx_coll_prefetch2(aa + i, bb + i);                                                     \
            fmt##_##opname##_block(dd + i, aa + i, bb + i, ~(__mmask64)0, v);                      \
        }                                                                                          \
        if (i < n) {                                                                               \
            fmt##_##opname##_block(dd + i, aa + i, bb + i, ((__mmask64)1 << (n - i)) - 1, v);      \
        }                                                                                          \
    }

#define FP8_512_KERNEL(fmt, opname, OP)                                                            \
    FP8_512_BLOCK(fmt, opname, OP, rne16)                                                          \
    static void fmt##_##opname##_avx512(void *d, const void *a, const void *b, size_t n)           \
    {                                                                                              \
        fmt##_##opname##_loop(d, a, b, n, _mm512_setzero_ps());                                    \
    }

FP8_512_KERNEL(e5m2, sum, add_ps)
FP8_512_KERNEL(e5m2, prod, mul_ps)
FP8_512_KERNEL(e4m3, sum, add_ps)
FP8_512_KERNEL(e4m3, prod, mul_e4m3)
FP8_512_BLOCK(e5m2, avgm, avg_mul, rne16)
FP8_512_BLOCK(e5m2, avgm_rto, avg_mul, ro16)
FP8_512_BLOCK(e5m2, avgd, avg_div, ro16)
FP8_512_BLOCK(e4m3, avgm, avg_mul, rne16)
FP8_512_BLOCK(e4m3, avgm_rto, avg_mul, ro16)
FP8_512_BLOCK(e4m3, avgd, avg_div, ro16)

/*
 * bf16 SUM, PROD and AVG on 32 lanes: a 32-bit lane holds two bf16 values, the even one widened
 * by a shift, the odd one by clearing the low half. Each fp32 result rounds to nearest-even by
 * adding 0x7fff plus the kept lsb; the NaN rule of enc_bf16 needs no select here, because an
 * fp32 NaN computed from bf16 operands has a zero low half (a propagated, quieted operand or the
 * default NaN), which the addition leaves alone. The tail through masked loads and stores.
 */
static inline __m512i bf_rne(__m512 f)
{
    __m512i x = _mm512_castps_si512(f);
    __m512i t = _mm512_add_epi32(x, vset(0x7fff));

    return _mm512_mask_add_epi32(t, _mm512_test_epi32_mask(x, vset(0x10000)), t, vset(1));
}

static inline __m512i bf_pair_op(__m512i a, __m512i b, __m512 (*op)(__m512, __m512, __m512),
                                 __m512 v)
{
    __m512 ae  = _mm512_castsi512_ps(_mm512_slli_epi32(a, 16));
    __m512 be  = _mm512_castsi512_ps(_mm512_slli_epi32(b, 16));
    __m512 ao  = _mm512_castsi512_ps(_mm512_and_si512(a, vset(0xffff0000u)));
    __m512 bo  = _mm512_castsi512_ps(_mm512_and_si512(b, vset(0xffff0000u)));
    __m512i re = bf_rne(op(ae, be, v));
    __m512i ro = bf_rne(op(ao, bo, v));

    /* odd results keep their high half, even ones move down: select by 0xffff0000 */
    return _mm512_ternarylogic_epi32(ro, _mm512_srli_epi32(re, 16), vset(0xffff0000u), 0xe4);
}

static inline void bf16_pairs(uint16_t *dd, const uint16_t *aa, const uint16_t *bb, size_t n,
                              __m512 (*op)(__m512, __m512, __m512), __m512 v)
{
    size_t i = 0;

    for (; i + 32 <= n; i += 32) {
        fx_coll_prefetch2(aa + i, bb + i);
        __m512i r = bf_pair_op(_mm512_loadu_si512(aa + i), _mm512_loadu_si512(bb + i), op, v);
        _mm512_storeu_si512(dd + i, r);
    }
    if (i < n) {
        __mmask32 k = (__mmask32)((1u << (n - i)) - 1);
        __m512i r   = bf_pair_op(_mm512_maskz_loadu_epi16(k, aa + i),
                                 _mm512_maskz_loadu_epi16(k, bb + i), op, v);
        _mm512_mask_storeu_epi16(dd + i, k, r);
    }
}

static void bf16_sum_avx512(void *d, const void *a, const void *b, size_t n)
{
    bf16_pairs(d, a, b, n, add_ps, _mm512_setzero_ps());
}

static void bf16_prod_avx512(void *d, const void *a, const void *b, size_t n)
{
    bf16_pairs(d, a, b, n, mul_ps, _mm512_setzero_ps());
}

/*
 * MIN and MAX of the sign-magnitude float formats without converting: the result is one of the
 * operands, so compare them as integers. Each code becomes a two's complement key (the
 * magnitude, negated for a set sign bit), which orders the values and makes -0 equal to +0, so
 * ties give the second operand as the fp32 compare does. A NaN operand wins, the first one
 * first; the scalar set re-encodes it, here it is kept (NaN payloads may differ between sets).
 * 64 fp8 or 32 16-bit lanes at a time; the tail through masked loads and stores.
 */
#define MINMAX_512(name, W, MASKT, MAGMASK, NANGT, CMP)                                            \
    static inline void name##_block(uint##W##_t *d, const uint##W##_t *a, const uint##W##_t *b,    \
                                    MASKT k)                                                       \
    {                                                                                              \
        __m512i x  = _mm512_maskz_loadu_epi##W(k, a);                                              \
        __m512i y  = _mm512_maskz_loadu_epi##W(k, b);                                              \
        __m512i mx = _mm512_and_si512(x, _mm512_set1_epi##W(MAGMASK));                             \
        __m512i my = _mm512_and_si512(y, _mm512_set1_epi##W(MAGMASK));                             \
        __m512i kx = _mm512_mask_sub_epi##W(mx, _mm512_movepi##W##_mask(x), zero, mx);             \
        __m512i ky = _mm512_mask_sub_epi##W(my, _mm512_movepi##W##_mask(y), zero, my);             \
        MASKT nx   = _mm512_cmpgt_epi##W##_mask(mx, _mm512_set1_epi##W(NANGT));                    \
        MASKT ny   = _mm512_cmpgt_epi##W##_mask(my, _mm512_set1_epi##W(NANGT));                    \
        MASKT pick = (MASKT)(nx | (CMP(kx, ky) & (MASKT)~ny));                                     \
        _mm512_mask_storeu_epi##W(d, k, _mm512_mask_blend_epi##W(pick, y, x));                     \
    }                                                                                              \
    static void name(void *d, const void *a, const void *b, size_t n)                              \
    {                                                                                              \
        const size_t lanes    = 64 / sizeof(uint##W##_t);                                          \
        uint##W##_t *dd       = d;                                                                 \
        const uint##W##_t *aa = a, *bb = b;                                                        \
        size_t i = 0;                                                                              \
        for (; i + lanes <= n; i += lanes) {                                                       \
            fx_coll_prefetch2(aa + i, bb + i);                                                     \
            name##_block(dd + i, aa + i, bb + i, (MASKT) ~(MASKT)0);                               \
        }                                                                                          \
        if (i < n) {                                                                               \
            name##_block(dd + i, aa + i, bb + i, (MASKT)(((MASKT)1 << (n - i)) - 1));              \
        }                                                                                          \
    }

static const __m512i zero;

#define LT8(x, y)  _mm512_cmplt_epi8_mask(x, y)
#define GT8(x, y)  _mm512_cmpgt_epi8_mask(x, y)
#define LT16(x, y) _mm512_cmplt_epi16_mask(x, y)
#define GT16(x, y) _mm512_cmpgt_epi16_mask(x, y)

/* e4m3: NaN is magnitude 0x7f; e5m2: above 0x7c (infinity); fp16: above 0x7c00; bf16: above
 * 0x7f80. */
MINMAX_512(e4m3_min_avx512, 8, __mmask64, 0x7f, 0x7e, LT8)
MINMAX_512(e4m3_max_avx512, 8, __mmask64, 0x7f, 0x7e, GT8)
MINMAX_512(e5m2_min_avx512, 8, __mmask64, 0x7f, 0x7c, LT8)
MINMAX_512(e5m2_max_avx512, 8, __mmask64, 0x7f, 0x7c, GT8)
MINMAX_512(f16_min_avx512, 16, __mmask32, 0x7fff, 0x7c00, LT16)
MINMAX_512(f16_max_avx512, 16, __mmask32, 0x7fff, 0x7c00, GT16)
MINMAX_512(bf16_min_avx512, 16, __mmask32, 0x7fff, 0x7f80, LT16)
MINMAX_512(bf16_max_avx512, 16, __mmask32, 0x7fff, 0x7f80, GT16)

/* The last step of FX_AVG, (a + b) / div in fp32 rounded once, 16 lanes at a time; the tail
 * through masked loads and stores. A power-of-two divisor multiplies by its reciprocal instead,
 * which is exact and so gives the quotient's bits. */
static inline bool pow2_div(float div, __m512 *v)
{
    uint32_t bits;

    memcpy(&bits, &div, sizeof(bits));
    if ((bits & 0x7fffffu) == 0 && (bits >> 23) > 1 && (bits >> 23) < 254) {
        *v = _mm512_set1_ps(1.0f / div);
        return true;
    }
    *v = _mm512_set1_ps(div);
    return false;
}

static inline __m512 ld_f16(const uint16_t *p, __mmask16 k)
{
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, p));
}

static inline void st_f16(uint16_t *p, __mmask16 k, __m512 v)
{
    _mm256_mask_storeu_epi16(p, k, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}

static inline __m512 ld_f32(const float *p, __mmask16 k)
{
    return _mm512_maskz_loadu_ps(k, p);
}

static inline void st_f32(float *p, __mmask16 k, __m512 v)
{
    _mm512_mask_storeu_ps(p, k, v);
}

#define AVG_512(tag, T)                                                                            \
    static void tag##_avg_avx512(void *d, const void *a, const void *b, size_t n, float div)       \
    {                                                                                              \
        T *dd       = d;                                                                           \
        const T *aa = a, *bb = b;                                                                  \
        size_t i = 0;                                                                              \
        __m512 v;                                                                                  \
        if (pow2_div(div, &v)) {                                                                   \
            for (; i + 16 <= n; i += 16) {                                                         \
                fx_coll_prefetch2(aa + i, bb + i);                                                 \
                __m512 s = _mm512_add_ps(ld_##tag(aa + i, 0xffff), ld_##tag(bb + i, 0xffff));      \
                st_##tag(dd + i, 0xffff, _mm512_mul_ps(s, v));                                     \
            }                                                                                      \
        } else {                                                                                   \
            for (; i + 16 <= n; i += 16) {                                                         \
                fx_coll_prefetch2(aa + i, bb + i);                                                 \
                __m512 s = _mm512_add_ps(ld_##tag(aa + i, 0xffff), ld_##tag(bb + i, 0xffff));      \
                st_##tag(dd + i, 0xffff, _mm512_div_ps(s, _mm512_set1_ps(div)));                   \
            }                                                                                      \
        }                                                                                          \
        if (i < n) {                                                                               \
            __mmask16 k = (__mmask16)((1u << (n - i)) - 1);                                        \
            __m512 s    = _mm512_add_ps(ld_##tag(aa + i, k), ld_##tag(bb + i, k));                 \
            st_##tag(dd + i, k, _mm512_div_ps(s, _mm512_set1_ps(div)));                            \
        }                                                                                          \
    }

AVG_512(f16, uint16_t)

static void bf16_avg_avx512(void *d, const void *a, const void *b, size_t n, float div)
{
    __m512 v;

    if (pow2_div(div, &v)) {
        bf16_pairs(d, a, b, n, avg_mul, v);
    } else {
        bf16_pairs(d, a, b, n, avg_div, v);
    }
}

/* fp8 AVG through the blocks above: over 2^e ranks, e up to MAXE, binary16 to nearest-even as
 * the SUM kernels; more ranks, and other counts, round to odd. */
#define FP8_512_AVG(fmt, MAXE)                                                                     \
    static void fmt##_avg_avx512(void *d, const void *a, const void *b, size_t n, float div)       \
    {                                                                                              \
        __m512 v;                                                                                  \
        if (!pow2_div(div, &v)) {                                                                  \
            fmt##_avgd_loop(d, a, b, n, v);                                                        \
        } else if (div <= (float)(1 << (MAXE))) {                                                  \
            fmt##_avgm_loop(d, a, b, n, v);                                                        \
        } else {                                                                                   \
            fmt##_avgm_rto_loop(d, a, b, n, v);                                                    \
        }                                                                                          \
    }

FP8_512_AVG(e5m2, 8)
FP8_512_AVG(e4m3, 7)
AVG_512(f32, float)

const fx_avg_fn *fx_coll_avg_avx512(void)
{
    static const fx_avg_fn avg[FX_NUM_DATATYPES] = {
        [FX_FLOAT16] = f16_avg_avx512,      [FX_BFLOAT16] = bf16_avg_avx512,
        [FX_FLOAT8_E4M3] = e4m3_avg_avx512, [FX_FLOAT8_E5M2] = e5m2_avg_avx512,
        [FX_FLOAT32] = f32_avg_avx512,
    };

    return avg;
}

#define KSUFFIX           _avx512
#define KERNELS_HAVE_F16C 1
#define KERNELS_HAVE_FP8  1
#define KERNELS_HAVE_BF16 1

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
