/*
 * The AVX-512 FP16 kernel set (AVX-512 FP16 and VBMI): the AVX-512 set with the fp8 and fp16
 * SUM and PROD kernels, and fp8 AVG over some power-of-two rank counts, replaced by binary16
 * arithmetic on 32 lanes, where it gives the bits of the fp32 reference.
 *
 * Why the results agree: rounding first to a format of p' bits and then to one of p bits gives
 * the same result as rounding once, for the sum or product of two p-bit numbers, whenever
 * p' >= 2p + 2 (Figueroa, "When is double rounding innocuous?", SIGNUM 1995). binary16 has
 * p' = 11 against 4 (e4m3) and 3 (e5m2); fp32 has 24 against 11 (fp16). The exponent ranges
 * matter too, and hold: an e5m2 result overflows binary16 (65520 and above) only where it also
 * rounds to infinity in e5m2 (61440 and above); e4m3 values are computed as value * 2^-8, whose
 * sums and products (one operand rescaled) stay within binary16's normal range or in its
 * subnormal range on a grid 2^7 times finer than e4m3's; binary16 products of fp8 values too
 * small for its subnormals round to zero in fp8 either way. The unit tests check every pair of
 * fp8 codes for every op, and all 2^32 pairs of fp16 operands for SUM and PROD.
 */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "coll_kernels.h"

static inline __m512i w16(int v)
{
    return _mm512_set1_epi16((short)v);
}

/* 32 fp8 codes (the low or high 8 of each 128-bit lane of v) in the high bytes of 16-bit lanes;
 * pack_hi puts the high bytes of the results of lo and hi back in order. */
static inline __m512i hi_lo(__m512i v)
{
    return _mm512_unpacklo_epi8(_mm512_setzero_si512(), v);
}

static inline __m512i hi_hi(__m512i v)
{
    return _mm512_unpackhi_epi8(_mm512_setzero_si512(), v);
}

static inline __m512i pack_hi(__m512i lo, __m512i hi)
{
    /* Byte i of the result: in 128-bit lane i / 16, the high byte of word i % 16 of lo (the
     * first 8) or of hi (index bit 6 set). */
    static const uint8_t idx[64] = {1,  3,  5,  7,   9,   11,  13,  15,  65,  67,  69,  71, 73,
                                    75, 77, 79, 17,  19,  21,  23,  25,  27,  29,  31,  81, 83,
                                    85, 87, 89, 91,  93,  95,  33,  35,  37,  39,  41,  43, 45,
                                    47, 97, 99, 101, 103, 105, 107, 109, 111, 49,  51,  53, 55,
                                    57, 59, 61, 63,  113, 115, 117, 119, 121, 123, 125, 127};

    return _mm512_permutex2var_epi8(lo, _mm512_loadu_si512(idx), hi);
}

/* e5m2 is the top byte of a binary16, subnormals included: the widened code is the value. */
static inline __m512h dec_e5m2(__m512i w)
{
    return _mm512_castsi512_ph(w);
}

/* e4m3 as a binary16 of its value times 2^-8: the sign stays at bit 15, exponent and mantissa
 * move down one bit to bits 13..7 (an e4m3 subnormal becomes a binary16 subnormal). A NaN code
 * becomes a finite number; the kernels mark NaN results from the inputs. */
static inline __m512h dec_e4m3(__m512i w)
{
    return _mm512_castsi512_ph(_mm512_and_si512(_mm512_srai_epi16(w, 1), w16(0xbfff)));
}

/* Round-to-nearest-even of the low 8 bits (add 0x7f, and one more when the kept lsb is odd), the
 * e5m2 code left in the high byte: a carry moves to the exponent, 61440 and above become
 * infinity, infinity stays. A NaN from binary16 arithmetic has a zero low byte here (quieted
 * inputs or the default NaN) and stays a NaN. */
static inline __m512i enc_e5m2(__m512h r)
{
    __m512i h = _mm512_castph_si512(r);
    __m512i t = _mm512_add_epi16(h, w16(0x7f));

    return _mm512_mask_add_epi16(t, _mm512_test_epi16_mask(h, w16(0x100)), t, w16(1));
}

/* e4m3 from value * 2^-8: saturate to +-448 (1.75 here), round the low 7 bits to
 * nearest-even, then move the magnitude up one bit under the sign so that the code is the high
 * byte. */
static inline __m512i enc_e4m3(__m512h r)
{
    __m512h lim = _mm512_set1_ph((_Float16)1.75f);
    __m512i h   = _mm512_castph_si512(_mm512_min_ph(_mm512_max_ph(r, -lim), lim));
    __m512i t   = _mm512_add_epi16(h, w16(0x3f));

    t = _mm512_mask_add_epi16(t, _mm512_test_epi16_mask(h, w16(0x80)), t, w16(1));
    return _mm512_add_epi16(t, _mm512_and_si512(t, w16(0x7fff)));
}

/* e4m3 has no infinity: a result is NaN exactly when an operand is (S.1111.111). */
static inline __m512i nan_e4m3(__m512i r, __m512i x, __m512i y)
{
    __m512i top    = _mm512_set1_epi8((char)0x80);
    __m512i ones   = _mm512_set1_epi8((char)0xff);
    __mmask64 ok_x = _mm512_cmpneq_epi8_mask(_mm512_or_si512(x, top), ones);
    __mmask64 ok   = _mm512_mask_cmpneq_epi8_mask(ok_x, _mm512_or_si512(y, top), ones);

    return _mm512_mask_mov_epi8(_mm512_set1_epi8(0x7f), ok, r);
}

static inline __m512i nan_e5m2(__m512i r, __m512i x, __m512i y)
{
    (void)x;
    (void)y;
    return r;
}

static inline __m512h add_ph(__m512h x, __m512h y)
{
    return _mm512_add_ph(x, y);
}

static inline __m512h mul_ph(__m512h x, __m512h y)
{
    return _mm512_mul_ph(x, y);
}

/* Both operands are value * 2^-8: rescale one so the product is value * 2^-8 again. */
static inline __m512h mul_e4m3(__m512h x, __m512h y)
{
    return _mm512_mul_ph(x, _mm512_mul_ph(y, _mm512_set1_ph((_Float16)256.0f)));
}

/* fp8, 64 lanes at a time as two halves of 32 binary16 lanes; the tail through masked loads
 * and stores. */
#define FP8_FP16_KERNEL(fmt, opname, OP)                                                           \
    static inline void fmt##_##opname##_block(uint8_t *d, const uint8_t *a, const uint8_t *b,      \
                                              __mmask64 k)                                         \
    {                                                                                              \
        __m512i x  = _mm512_maskz_loadu_epi8(k, a);                                                \
        __m512i y  = _mm512_maskz_loadu_epi8(k, b);                                                \
        __m512i lo = enc_##fmt(OP(dec_##fmt(hi_lo(x)), dec_##fmt(hi_lo(y))));                      \
        __m512i hi = enc_##fmt(OP(dec_##fmt(hi_hi(x)), dec_##fmt(hi_hi(y))));                      \
        _mm512_mask_storeu_epi8(d, k, nan_##fmt(pack_hi(lo, hi), x, y));                           \
    }                                                                                              \
    static void fmt##_##opname##_fp16(void *d, const void *a, const void *b, size_t n)             \
    {                                                                                              \
        uint8_t *dd       = d;                                                                     \
        const uint8_t *aa = a, *bb = b;                                                            \
        size_t i = 0;                                                                              \
        for (; i + 64 <= n; i += 64) {                                                             \
            fx_coll_prefetch2(aa + i, bb + i);                                                     \
            fmt##_##opname##_block(dd + i, aa + i, bb + i, ~(__mmask64)0);                         \
        }                                                                                          \
        if (i < n) {                                                                               \
            fmt##_##opname##_block(dd + i, aa + i, bb + i, ((__mmask64)1 << (n - i)) - 1);         \
        }                                                                                          \
    }

FP8_FP16_KERNEL(e5m2, sum, add_ph)
FP8_FP16_KERNEL(e5m2, prod, mul_ph)
FP8_FP16_KERNEL(e4m3, sum, add_ph)
FP8_FP16_KERNEL(e4m3, prod, mul_e4m3)

/* fp16 in its own arithmetic (p' = 24 >= 2 * 11 + 2 makes fp32-then-round the same), 32 lanes
 * at a time; the tail through masked loads and stores. */
#define F16_FP16_KERNEL(opname, OP)                                                                \
    static inline void f16_##opname##_block(uint16_t *d, const uint16_t *a, const uint16_t *b,     \
                                            __mmask32 k)                                           \
    {                                                                                              \
        __m512h x = _mm512_castsi512_ph(_mm512_maskz_loadu_epi16(k, a));                           \
        __m512h y = _mm512_castsi512_ph(_mm512_maskz_loadu_epi16(k, b));                           \
        _mm512_mask_storeu_epi16(d, k, _mm512_castph_si512(OP(x, y)));                             \
    }                                                                                              \
    static void f16_##opname##_fp16(void *d, const void *a, const void *b, size_t n)               \
    {                                                                                              \
        uint16_t *dd       = d;                                                                    \
        const uint16_t *aa = a, *bb = b;                                                           \
        size_t i = 0;                                                                              \
        for (; i + 32 <= n; i += 32) {                                                             \
            fx_coll_prefetch2(aa + i, bb + i);                                                     \
            f16_##opname##_block(dd + i, aa + i, bb + i, ~(__mmask32)0);                           \
        }                                                                                          \
        if (i < n) {                                                                               \
            f16_##opname##_block(dd + i, aa + i, bb + i, (__mmask32)((1u << (n - i)) - 1));        \
        }                                                                                          \
    }

F16_FP16_KERNEL(sum, add_ph)
F16_FP16_KERNEL(prod, mul_ph)

/*
 * FX_AVG over 2^e ranks for fp8: the reference rounds (a + b) / 2^e once from fp32, and that
 * quotient is exact there. Here the sum is formed in binary16 (e5m2 as a/2 + b/2 in one fused
 * step, so it cannot overflow where the quotient would not), then scaled by a power of two with
 * vscalefph. Other rank counts divide in fp32 (the AVX-512 set's kernel).
 */
/* e where div is 2^e with 1 <= e <= 30, else 0. */
static inline int pow2_exponent(float div)
{
    uint32_t bits;

    memcpy(&bits, &div, sizeof(bits));
    if ((bits & 0x807fffffu) != 0 || (bits >> 23) < 128 || (bits >> 23) > 157) {
        return 0;
    }
    return (int)(bits >> 23) - 127;
}

static inline __m512h avg_e5m2(__m512h x, __m512h y, __m512h sc)
{
    __m512h half = _mm512_set1_ph((_Float16)0.5f);

    return _mm512_scalef_ph(_mm512_fmadd_ph(x, half, _mm512_mul_ph(y, half)), sc);
}

static inline __m512h avg_e4m3(__m512h x, __m512h y, __m512h sc)
{
    return _mm512_scalef_ph(_mm512_add_ph(x, y), sc);
}

#define FP8_FP16_AVG(fmt, DT, SHIFT, MAXE)                                                         \
    static inline void fmt##_avg_block(uint8_t *d, const uint8_t *a, const uint8_t *b,             \
                                       __mmask64 k, __m512h sc)                                    \
    {                                                                                              \
        __m512i x  = _mm512_maskz_loadu_epi8(k, a);                                                \
        __m512i y  = _mm512_maskz_loadu_epi8(k, b);                                                \
        __m512i lo = enc_##fmt(avg_##fmt(dec_##fmt(hi_lo(x)), dec_##fmt(hi_lo(y)), sc));           \
        __m512i hi = enc_##fmt(avg_##fmt(dec_##fmt(hi_hi(x)), dec_##fmt(hi_hi(y)), sc));           \
        _mm512_mask_storeu_epi8(d, k, nan_##fmt(pack_hi(lo, hi), x, y));                           \
    }                                                                                              \
    static void fmt##_avg_fp16(void *d, const void *a, const void *b, size_t n, float div)         \
    {                                                                                              \
        uint8_t *dd       = d;                                                                     \
        const uint8_t *aa = a, *bb = b;                                                            \
        size_t i   = 0;                                                                            \
        int e      = pow2_exponent(div);                                                           \
        __m512h sc = _mm512_set1_ph((_Float16)(float)(SHIFT - e));                                 \
        if (e <= 0 || e > MAXE) {                                                                  \
            fx_coll_avg_avx512()[DT](d, a, b, n, div);                                             \
            return;                                                                                \
        }                                                                                          \
        for (; i + 64 <= n; i += 64) {                                                             \
            fx_coll_prefetch2(aa + i, bb + i);                                                     \
            fmt##_avg_block(dd + i, aa + i, bb + i, ~(__mmask64)0, sc);                            \
        }                                                                                          \
        if (i < n) {                                                                               \
            fmt##_avg_block(dd + i, aa + i, bb + i, ((__mmask64)1 << (n - i)) - 1, sc);            \
        }                                                                                          \
    }
/*
 * The e5m2 sum is already halved: scale by 2^(1 - e); e4m3 by 2^-e. The shortcut holds for
 * e5m2 up to 256 ranks and e4m3 up to 128, which the unit tests check for every pair of codes
 * and every power of two. For more ranks a quotient can fall into binary16's subnormal range,
 * where the scaling rounds a second time to a grid only 2^8 (e5m2) or 2^7 (e4m3) finer than
 * the fp8 one, and can make a tie of what the fp32 quotient rounds up (2^-16 + 2^-8, halved
 * then divided by 2^8, is 2^-17 + 2^-25, which binary16 rounds to 2^-17, a tie e5m2 rounds
 * to 0). Those divide in fp32.
 */
FP8_FP16_AVG(e5m2, FX_FLOAT8_E5M2, 1, 8)
FP8_FP16_AVG(e4m3, FX_FLOAT8_E4M3, 0, 7)

void fx_coll_kernels_avx512fp16_avg_patch(fx_avg_fn avg[FX_NUM_DATATYPES])
{
    avg[FX_FLOAT8_E4M3] = e4m3_avg_fp16;
    avg[FX_FLOAT8_E5M2] = e5m2_avg_fp16;
}

void fx_coll_kernels_avx512fp16_patch(fx_reduce_fn table[FX_NUM_DATATYPES][4])
{
    table[FX_FLOAT8_E4M3][FX_SUM]  = e4m3_sum_fp16;
    table[FX_FLOAT8_E4M3][FX_PROD] = e4m3_prod_fp16;
    table[FX_FLOAT8_E5M2][FX_SUM]  = e5m2_sum_fp16;
    table[FX_FLOAT8_E5M2][FX_PROD] = e5m2_prod_fp16;
    table[FX_FLOAT16][FX_SUM]      = f16_sum_fp16;
    table[FX_FLOAT16][FX_PROD]     = f16_prod_fp16;
}
