/* The AVX2+F16C kernel set: the shared loops compiled for AVX2, and fp16 through F16C. */
#include <immintrin.h>
#include <stdbool.h>
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
            fx_coll_prefetch2(aa + i, bb + i);                                                     \
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

F16C_KERNEL(sum, _mm256_add_ps(x, y))
F16C_KERNEL(prod, _mm256_mul_ps(x, y))

/* The bf16 conversions of coll_kernels_inl.h on 8 lanes: the same integer and fp32 operations,
 * so the results are bitwise those of the scalar set. Every integer compared is below 2^31, so
 * signed compares serve. */
static inline __m256i vset(uint32_t v)
{
    return _mm256_set1_epi32((int)v);
}

static inline __m256i vsel(__m256i mask, __m256i no, __m256i yes)
{
    return _mm256_blendv_epi8(no, yes, mask);
}

/*
 * fp8 SUM, PROD and AVG, 32 codes at a time with no byte shuffle: each 16-bit lane of the 32
 * loaded bytes holds an even code in its low byte and an odd one in its high byte, and a shift
 * or a mask makes each a binary16 (e5m2 is the top byte of one; e4m3 its value times 2^-8, one
 * bit lower, as in the AVX-512 sets). F16C widens them to fp32 exactly, the op runs in fp32, the
 * result goes back to binary16 with vcvtps2ph, then to fp8 to nearest-even in 16-bit lanes, and
 * the even and odd codes return to their bytes with a shift, a mask and an or.
 *
 * SUM, PROD and AVG over 2^e ranks (e up to 8 for e5m2, 7 for e4m3) round to binary16 to
 * nearest-even: for the sum or product of two fp8 values, and that scaled by 2^-e, rounding to
 * binary16 and then to fp8 gives the fp8 rounding of the fp32 result, for the reasons
 * coll_kernels_avx512fp16.c gives (binary16's 11 bits are at least 2p + 2 for fp8's p, and
 * fp32's 24 at least 2 x 11 + 2). AVG over other rank counts (the quotient is not such a value)
 * rounds to binary16 to odd (toward zero, the last bit set when that was inexact), which with
 * binary16's 7 or more bits below fp8's last one makes the second rounding exact, as the
 * AVX-512 set does. The unit tests check every pair of codes, op and power of two.
 */
static inline __m256i w16(int v)
{
    return _mm256_set1_epi16((short)v);
}

static inline __m256i even_e5m2(__m256i w)
{
    return _mm256_slli_epi16(w, 8);
}

static inline __m256i odd_e5m2(__m256i w)
{
    return _mm256_and_si256(w, w16(0xff00));
}

/* sign to bit 15, magnitude to bits 13..7 */
static inline __m256i odd_e4m3(__m256i w)
{
    return _mm256_and_si256(_mm256_srai_epi16(w, 1), w16(0xbf80));
}

static inline __m256i even_e4m3(__m256i w)
{
    return odd_e4m3(_mm256_slli_epi16(w, 8));
}
static inline __m128i rne16(__m256 r)
{
    return _mm256_cvtps_ph(r, _MM_FROUND_TO_NEAREST_INT);
}

/* The 32-bit inexact mask narrowed to 16-bit lanes sets the last bit: round to odd. A NaN
 * compares unequal and gets its last bit set, which stays in the low byte. */
static inline __m128i rto16(__m256 r)
{
    __m128i h   = _mm256_cvtps_ph(r, _MM_FROUND_TO_ZERO);
    __m256i inx = _mm256_castps_si256(_mm256_cmp_ps(_mm256_cvtph_ps(h), r, _CMP_NEQ_UQ));
    __m128i m   = _mm_packs_epi32(_mm256_castsi256_si128(inx), _mm256_extracti128_si256(inx, 1));

    return _mm_or_si128(h, _mm_srli_epi16(m, 15));
}

/* binary16 to fp8 to nearest-even in 16-bit lanes, the code in the high byte: add 0x7f plus the
 * kept lsb. An e5m2 NaN in binary16 has at most its lsb set in the low byte, so no carry leaves
 * it; toward zero stops at 65504, which rounds to infinity as the fp32 value would. e4m3 (value
 * times 2^-8) first saturates its magnitude at 448 (0x3f00 here) and moves it up one bit under
 * the sign; its NaN code decodes to a finite value and is restored afterwards (nan_e4m3). */
static inline __m256i rne8_e5m2(__m256i h)
{
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi16(h, 8), w16(1));

    return _mm256_add_epi16(_mm256_add_epi16(h, w16(0x7f)), lsb);
}

static inline __m256i rne8_e4m3(__m256i h)
{
    __m256i m = _mm256_and_si256(h, w16(0x7fff));
    __m256i c = _mm256_min_epu16(m, w16(0x3f00));

    return rne8_e5m2(_mm256_add_epi16(_mm256_xor_si256(h, m), _mm256_add_epi16(c, c)));
}

/* e4m3 has no infinity: a result is NaN exactly when an operand is (S.1111.111); all ones is
 * one. */
static inline __m256i nan_e4m3(__m256i r, __m256i x, __m256i y)
{
    __m256i top = _mm256_set1_epi8((char)0x80);
    __m256i m   = _mm256_max_epu8(_mm256_or_si256(x, top), _mm256_or_si256(y, top));

    return _mm256_or_si256(r, _mm256_cmpeq_epi8(m, _mm256_set1_epi8((char)0xff)));
}

static inline __m256i nan_e5m2(__m256i r, __m256i x, __m256i y)
{
    (void)x;
    (void)y;
    return r;
}

/* The ops of the fp8 kernels; v is the AVG divisor or its reciprocal. */
static inline __m256 add_ps(__m256 x, __m256 y, __m256 v)
{
    (void)v;
    return _mm256_add_ps(x, y);
}

static inline __m256 mul_ps(__m256 x, __m256 y, __m256 v)
{
    (void)v;
    return _mm256_mul_ps(x, y);
}

/* Both operands are value * 2^-8: rescale one so the product is value * 2^-8 again. */
static inline __m256 mul_e4m3(__m256 x, __m256 y, __m256 v)
{
    (void)v;
    return _mm256_mul_ps(x, _mm256_mul_ps(y, _mm256_set1_ps(256.0f)));
}

/* AVG: scaling by 2^-8 commutes with the division (no fp32 subnormal is reached from fp8
 * operands). */
static inline __m256 avg_mul(__m256 x, __m256 y, __m256 v)
{
    return _mm256_mul_ps(_mm256_add_ps(x, y), v);
}

static inline __m256 avg_div(__m256 x, __m256 y, __m256 v)
{
    return _mm256_div_ps(_mm256_add_ps(x, y), v);
}

/* 32 codes of each operand through OP (the even ones, then the odd ones), TO16 the rounding to
 * binary16; the tail on a zero-padded copy, and one prefetch per 64 bytes. */
#define FP8_AVX2_LOOP(fmt, opname, OP, TO16)                                                       \
    static inline __m256i fmt##_##opname##_half(__m256i hx, __m256i hy, __m256 v)                  \
    {                                                                                              \
        __m256 xl = _mm256_cvtph_ps(_mm256_castsi256_si128(hx));                                   \
        __m256 xh = _mm256_cvtph_ps(_mm256_extracti128_si256(hx, 1));                              \
        __m256 yl = _mm256_cvtph_ps(_mm256_castsi256_si128(hy));                                   \
        __m256 yh = _mm256_cvtph_ps(_mm256_extracti128_si256(hy, 1));                              \
        return rne8_##fmt(_mm256_set_m128i(TO16(OP(xh, yh, v)), TO16(OP(xl, yl, v))));             \
    }                                                                                              \
    static inline void fmt##_##opname##_step(uint8_t *d, const uint8_t *a, const uint8_t *b,       \
                                             __m256 v)                                             \
    {                                                                                              \
        __m256i x  = _mm256_loadu_si256((const __m256i *)a);                                       \
        __m256i y  = _mm256_loadu_si256((const __m256i *)b);                                       \
        __m256i te = fmt##_##opname##_half(even_##fmt(x), even_##fmt(y), v);                       \
        __m256i to = fmt##_##opname##_half(odd_##fmt(x), odd_##fmt(y), v);                         \
        __m256i r  = _mm256_or_si256(_mm256_srli_epi16(te, 8), _mm256_and_si256(to, w16(0xff00))); \
        _mm256_storeu_si256((__m256i *)d, nan_##fmt(r, x, y));                                     \
    }                                                                                              \
    static void fmt##_##opname##_loop(uint8_t *dd, const uint8_t *aa, const uint8_t *bb, size_t n, \
                                      __m256 v)                                                    \
    {                                                                                              \
        size_t i = 0;                                                                              \
        for (; i + 64 <= n; i += 64) {                                                             \
            fx_coll_prefetch2(aa + i, bb + i);                                                     \
            fmt##_##opname##_step(dd + i, aa + i, bb + i, v);                                      \
            fmt##_##opname##_step(dd + i + 32, aa + i + 32, bb + i + 32, v);                       \
        }                                                                                          \
        if (i + 32 <= n) {                                                                         \
            fmt##_##opname##_step(dd + i, aa + i, bb + i, v);                                      \
            i += 32;                                                                               \
        }                                                                                          \
        if (i < n) {                                                                               \
            uint8_t ta[32] = {0}, tb[32] = {0}, td[32];                                            \
            memcpy(ta, aa + i, n - i);                                                             \
            memcpy(tb, bb + i, n - i);                                                             \
            fmt##_##opname##_step(td, ta, tb, v);                                                  \
            memcpy(dd + i, td, n - i);                                                             \
        }                                                                                          \
    }

#define FP8_AVX2_KERNEL(fmt, opname, OP)                                                           \
    FP8_AVX2_LOOP(fmt, opname, OP, rne16)                                                          \
    static void fmt##_##opname##_avx2(void *d, const void *a, const void *b, size_t n)             \
    {                                                                                              \
        fmt##_##opname##_loop(d, a, b, n, _mm256_setzero_ps());                                    \
    }

FP8_AVX2_KERNEL(e5m2, sum, add_ps)
FP8_AVX2_KERNEL(e5m2, prod, mul_ps)
FP8_AVX2_KERNEL(e4m3, sum, add_ps)
FP8_AVX2_KERNEL(e4m3, prod, mul_e4m3)
FP8_AVX2_LOOP(e5m2, avgm, avg_mul, rne16)
FP8_AVX2_LOOP(e4m3, avgm, avg_mul, rne16)
FP8_AVX2_LOOP(e5m2, avgm_rto, avg_mul, rto16)
FP8_AVX2_LOOP(e4m3, avgm_rto, avg_mul, rto16)
FP8_AVX2_LOOP(e5m2, avgd, avg_div, rto16)
FP8_AVX2_LOOP(e4m3, avgd, avg_div, rto16)

/* bf16 as the scalar bf_load/bf_store: shift up; round to nearest-even by adding 0x7fff plus
 * the kept lsb, NaN kept quiet. */
static inline __m256 dec_bf16(const uint16_t *p)
{
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));

    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

static inline __m128i enc_bf16(__m256 f)
{
    __m256i x   = _mm256_castps_si256(f);
    __m256i odd = _mm256_and_si256(_mm256_srli_epi32(x, 16), vset(1));
    __m256i r   = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(x, vset(0x7fff)), odd), 16);
    __m256i q   = _mm256_or_si256(_mm256_srli_epi32(x, 16), vset(0x40));
    __m256i ax  = _mm256_and_si256(x, vset(0x7fffffffu));

    r = vsel(_mm256_cmpgt_epi32(ax, vset(0x7f800000u)), r, q);
    return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
}

/* bf16, 8 lanes at a time; the tail on a zero-padded copy. */
#define BF16_AVX2_KERNEL(opname, VEXPR)                                                            \
    static void bf16_##opname##_avx2(void *d, const void *a, const void *b, size_t n)              \
    {                                                                                              \
        uint16_t *dd       = d;                                                                    \
        const uint16_t *aa = a, *bb = b;                                                           \
        size_t i = 0;                                                                              \
        for (; i + 8 <= n; i += 8) {                                                               \
            fx_coll_prefetch2(aa + i, bb + i);                                                     \
            __m256 x = dec_bf16(aa + i);                                                           \
            __m256 y = dec_bf16(bb + i);                                                           \
            _mm_storeu_si128((__m128i *)(dd + i), enc_bf16(VEXPR));                                \
        }                                                                                          \
        if (i < n) {                                                                               \
            uint16_t ta[8] = {0}, tb[8] = {0}, td[8];                                              \
            memcpy(ta, aa + i, (n - i) * 2);                                                       \
            memcpy(tb, bb + i, (n - i) * 2);                                                       \
            __m256 x = dec_bf16(ta);                                                               \
            __m256 y = dec_bf16(tb);                                                               \
            _mm_storeu_si128((__m128i *)td, enc_bf16(VEXPR));                                      \
            memcpy(dd + i, td, (n - i) * 2);                                                       \
        }                                                                                          \
    }

BF16_AVX2_KERNEL(sum, _mm256_add_ps(x, y))
BF16_AVX2_KERNEL(prod, _mm256_mul_ps(x, y))

/*
 * MIN and MAX of the sign-magnitude float formats as integer compares, as the AVX-512 set does
 * (coll_kernels_avx512.c): vpsign turns each magnitude into a two's complement key (-0 and +0
 * both 0), a NaN operand wins, the first one first. 32 fp8 or 16 16-bit lanes at a time; the
 * tail on a zero-padded copy.
 */
#define MINMAX_256(name, W, MAGMASK, NANGT, KMIN)                                                  \
    static inline __m256i name##_block(__m256i x, __m256i y)                                       \
    {                                                                                              \
        __m256i mx   = _mm256_and_si256(x, _mm256_set1_epi##W(MAGMASK));                           \
        __m256i my   = _mm256_and_si256(y, _mm256_set1_epi##W(MAGMASK));                           \
        __m256i kx   = _mm256_sign_epi##W(mx, x);                                                  \
        __m256i ky   = _mm256_sign_epi##W(my, y);                                                  \
        __m256i nx   = _mm256_cmpgt_epi##W(mx, _mm256_set1_epi##W(NANGT));                         \
        __m256i ny   = _mm256_cmpgt_epi##W(my, _mm256_set1_epi##W(NANGT));                         \
        __m256i cmp  = KMIN ? _mm256_cmpgt_epi##W(ky, kx) : _mm256_cmpgt_epi##W(kx, ky);           \
        __m256i pick = _mm256_or_si256(nx, _mm256_andnot_si256(ny, cmp));                          \
        return _mm256_blendv_epi8(y, x, pick);                                                     \
    }                                                                                              \
    static void name(void *d, const void *a, const void *b, size_t n)                              \
    {                                                                                              \
        const size_t lanes    = 32 / sizeof(uint##W##_t);                                          \
        uint##W##_t *dd       = d;                                                                 \
        const uint##W##_t *aa = a, *bb = b;                                                        \
        size_t i = 0;                                                                              \
        for (; i + lanes <= n; i += lanes) {                                                       \
            fx_coll_prefetch2(aa + i, bb + i);                                                     \
            __m256i x = _mm256_loadu_si256((const __m256i *)(aa + i));                             \
            __m256i y = _mm256_loadu_si256((const __m256i *)(bb + i));                             \
            _mm256_storeu_si256((__m256i *)(dd + i), name##_block(x, y));                          \
        }                                                                                          \
        if (i < n) {                                                                               \
            uint##W##_t ta[32 / sizeof(uint##W##_t)] = {0}, tb[32 / sizeof(uint##W##_t)] = {0};    \
            uint##W##_t td[32 / sizeof(uint##W##_t)];                                              \
            memcpy(ta, aa + i, (n - i) * sizeof(uint##W##_t));                                     \
            memcpy(tb, bb + i, (n - i) * sizeof(uint##W##_t));                                     \
            _mm256_storeu_si256((__m256i *)td,                                                     \
                                name##_block(_mm256_loadu_si256((const __m256i *)ta),              \
                                             _mm256_loadu_si256((const __m256i *)tb)));            \
            memcpy(dd + i, td, (n - i) * sizeof(uint##W##_t));                                     \
        }                                                                                          \
    }

/* e4m3: NaN is magnitude 0x7f; e5m2: above 0x7c (infinity); fp16: above 0x7c00; bf16: above
 * 0x7f80. */
MINMAX_256(e4m3_min_avx2, 8, 0x7f, 0x7e, 1)
MINMAX_256(e4m3_max_avx2, 8, 0x7f, 0x7e, 0)
MINMAX_256(e5m2_min_avx2, 8, 0x7f, 0x7c, 1)
MINMAX_256(e5m2_max_avx2, 8, 0x7f, 0x7c, 0)
MINMAX_256(f16_min_avx2, 16, 0x7fff, 0x7c00, 1)
MINMAX_256(f16_max_avx2, 16, 0x7fff, 0x7c00, 0)
MINMAX_256(bf16_min_avx2, 16, 0x7fff, 0x7f80, 1)
MINMAX_256(bf16_max_avx2, 16, 0x7fff, 0x7f80, 0)

/* The last step of FX_AVG, (a + b) / div in fp32 rounded once, 8 lanes at a time; the tail on a
 * zero-padded copy. A power-of-two divisor multiplies by its exact reciprocal. */
static inline bool pow2_div(float div, __m256 *v)
{
    uint32_t bits;

    memcpy(&bits, &div, sizeof(bits));
    if ((bits & 0x7fffffu) == 0 && (bits >> 23) > 1 && (bits >> 23) < 254) {
        *v = _mm256_set1_ps(1.0f / div);
        return true;
    }
    *v = _mm256_set1_ps(div);
    return false;
}

static inline __m256 ld_f16(const uint16_t *p)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

static inline void st_f16(uint16_t *p, __m256 v)
{
    _mm_storeu_si128((__m128i *)p, _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}

static inline __m256 ld_bf16(const uint16_t *p)
{
    return dec_bf16(p);
}

static inline void st_bf16(uint16_t *p, __m256 v)
{
    _mm_storeu_si128((__m128i *)p, enc_bf16(v));
}

static inline __m256 ld_f32(const float *p)
{
    return _mm256_loadu_ps(p);
}

static inline void st_f32(float *p, __m256 v)
{
    _mm256_storeu_ps(p, v);
}

#define AVG_256(tag, T)                                                                            \
    static void tag##_avg_avx2(void *d, const void *a, const void *b, size_t n, float div)         \
    {                                                                                              \
        T *dd       = d;                                                                           \
        const T *aa = a, *bb = b;                                                                  \
        size_t i = 0;                                                                              \
        __m256 v;                                                                                  \
        if (pow2_div(div, &v)) {                                                                   \
            for (; i + 8 <= n; i += 8) {                                                           \
                fx_coll_prefetch2(aa + i, bb + i);                                                 \
                __m256 s = _mm256_add_ps(ld_##tag(aa + i), ld_##tag(bb + i));                      \
                st_##tag(dd + i, _mm256_mul_ps(s, v));                                             \
            }                                                                                      \
        } else {                                                                                   \
            for (; i + 8 <= n; i += 8) {                                                           \
                fx_coll_prefetch2(aa + i, bb + i);                                                 \
                __m256 s = _mm256_add_ps(ld_##tag(aa + i), ld_##tag(bb + i));                      \
                st_##tag(dd + i, _mm256_div_ps(s, v));                                             \
            }                                                                                      \
        }                                                                                          \
        if (i < n) {                                                                               \
            T ta[16] = {0}, tb[16] = {0}, td[16];                                                  \
            memcpy(ta, aa + i, (n - i) * sizeof(T));                                               \
            memcpy(tb, bb + i, (n - i) * sizeof(T));                                               \
            __m256 s = _mm256_add_ps(ld_##tag(ta), ld_##tag(tb));                                  \
            st_##tag(td, _mm256_div_ps(s, _mm256_set1_ps(div)));                                   \
            memcpy(dd + i, td, (n - i) * sizeof(T));                                               \
        }                                                                                          \
    }

AVG_256(f16, uint16_t)
AVG_256(bf16, uint16_t)

/* fp8: over 2^e ranks, e up to MAXE, the binary16 rounding to nearest-even of the SUM kernels
 * serves; more ranks, and other counts, round to odd (see above). */
#define FP8_AVX2_AVG(fmt, MAXE)                                                                    \
    static void fmt##_avg_avx2(void *d, const void *a, const void *b, size_t n, float div)         \
    {                                                                                              \
        __m256 v;                                                                                  \
        if (!pow2_div(div, &v)) {                                                                  \
            fmt##_avgd_loop(d, a, b, n, v);                                                        \
        } else if (div <= (float)(1 << (MAXE))) {                                                  \
            fmt##_avgm_loop(d, a, b, n, v);                                                        \
        } else {                                                                                   \
            fmt##_avgm_rto_loop(d, a, b, n, v);                                                    \
        }                                                                                          \
    }

FP8_AVX2_AVG(e5m2, 8)
FP8_AVX2_AVG(e4m3, 7)
AVG_256(f32, float)

const fx_avg_fn *fx_coll_avg_avx2(void)
{
    static const fx_avg_fn avg[FX_NUM_DATATYPES] = {
        [FX_FLOAT16] = f16_avg_avx2,      [FX_BFLOAT16] = bf16_avg_avx2,
        [FX_FLOAT8_E4M3] = e4m3_avg_avx2, [FX_FLOAT8_E5M2] = e5m2_avg_avx2,
        [FX_FLOAT32] = f32_avg_avx2,
    };

    return avg;
}

#define KSUFFIX           _avx2
#define KERNELS_HAVE_F16C 1
#define KERNELS_HAVE_FP8  1
#define KERNELS_HAVE_BF16 1

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
