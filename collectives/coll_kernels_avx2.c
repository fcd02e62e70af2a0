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

/* The fp8 and bf16 conversions of coll_kernels_fp8_inl.h and coll_kernels_inl.h on 8 lanes: the
 * same integer and fp32 operations, so the results are bitwise those of the scalar set. Every
 * integer compared is below 2^31, so signed compares serve. */
static inline __m256i vset(uint32_t v)
{
    return _mm256_set1_epi32((int)v);
}

static inline __m256i vsel(__m256i mask, __m256i no, __m256i yes)
{
    return _mm256_blendv_epi8(no, yes, mask);
}

/* e5m2 is the top byte of a binary16: decode through F16C (exact; a NaN comes out quiet, its
 * payload aside as the scalar decode). */
static inline __m256 ld_e5m2(const uint8_t *p)
{
    __m128i h = _mm_slli_epi16(_mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)p)), 8);

    return _mm256_cvtph_ps(h);
}

/* Round-to-nearest-even magnitude code of both formats (ax = |x| bits), as in
 * coll_kernels_fp8_inl.h: sh is the mantissa shift, the rest the format's constants. */
static inline __m256i enc_fp8(__m256i ax, int sh, uint32_t rebias, float magic, uint32_t magic_bits,
                              uint32_t sub_lim)
{
    __m256i odd  = _mm256_and_si256(_mm256_srli_epi32(ax, sh), vset(1));
    __m256i half = vset((1u << (sh - 1)) - 1);
    __m256i norm = _mm256_sub_epi32(
        _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(ax, half), odd), sh), vset(rebias));
    __m256i sub = _mm256_sub_epi32(
        _mm256_castps_si256(_mm256_add_ps(_mm256_castsi256_ps(ax), _mm256_set1_ps(magic))),
        vset(magic_bits));

    return vsel(_mm256_cmpgt_epi32(vset(sub_lim), ax), norm, sub);
}

static inline __m256i sign8(__m256 f)
{
    return _mm256_and_si256(_mm256_srli_epi32(_mm256_castps_si256(f), 24), vset(0x80));
}

static inline __m256i enc_e4m3(__m256 f)
{
    __m256i ax = _mm256_and_si256(_mm256_castps_si256(f), vset(0x7fffffffu));
    __m256i v  = enc_fp8(ax, 20, 120u << 3, 0x1p14f, 0x46800000u, 0x3c800000u);

    v = vsel(_mm256_cmpgt_epi32(ax, vset(0x43e00000u)), v, vset(0x7e));
    v = vsel(_mm256_cmpgt_epi32(ax, vset(0x7f800000u)), v, vset(0x7f));
    return _mm256_or_si256(v, sign8(f));
}

static inline __m256i enc_e5m2(__m256 f)
{
    __m256i ax = _mm256_and_si256(_mm256_castps_si256(f), vset(0x7fffffffu));
    __m256i v  = enc_fp8(ax, 21, 112u << 2, 0x1p7f, 0x43000000u, 0x38800000u);

    v = vsel(_mm256_cmpgt_epi32(ax, vset(0x476fffffu)), v, vset(0x7c));
    v = vsel(_mm256_cmpgt_epi32(ax, vset(0x7f800000u)), v, vset(0x7e));
    return _mm256_or_si256(v, sign8(f));
}

/* Eight 32-bit codes (each below 256) to eight bytes. */
static inline __m128i pack8(__m256i v)
{
    __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));

    return _mm_packus_epi16(w, w);
}

/* e4m3 placed in a binary16 as the value times 2^-8 (sign to bit 15, exponent and mantissa
 * below it; e4m3 subnormals become binary16 subnormals), NaN made a binary16 NaN, then
 * converted by F16C and scaled back: exact, and cheaper than rebuilding the fp32 bits. */
static inline __m256 ld_e4m3(const uint8_t *p)
{
    __m128i sx  = _mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i *)p));
    __m128i h   = _mm_and_si128(_mm_slli_epi16(sx, 7), _mm_set1_epi16((short)0xbf80));
    __m128i nan = _mm_cmpeq_epi16(_mm_and_si128(h, _mm_set1_epi16(0x7fff)), _mm_set1_epi16(0x3f80));

    h = _mm_or_si128(h, _mm_and_si128(nan, _mm_set1_epi16(0x7e00)));
    return _mm256_mul_ps(_mm256_cvtph_ps(h), _mm256_set1_ps(256.0f));
}

/* fp8, 8 lanes at a time; the tail through the same instructions on a zero-padded copy. */
#define FP8_AVX2_KERNEL(fmt, opname, VEXPR)                                                        \
    static void fmt##_##opname##_avx2(void *d, const void *a, const void *b, size_t n)             \
    {                                                                                              \
        uint8_t *dd       = d;                                                                     \
        const uint8_t *aa = a, *bb = b;                                                            \
        size_t i = 0;                                                                              \
        for (; i + 8 <= n; i += 8) {                                                               \
            fx_coll_prefetch2(aa + i, bb + i);                                                     \
            __m256 x = ld_##fmt(aa + i);                                                           \
            __m256 y = ld_##fmt(bb + i);                                                           \
            _mm_storel_epi64((__m128i *)(dd + i), pack8(enc_##fmt(VEXPR)));                        \
        }                                                                                          \
        if (i < n) {                                                                               \
            uint8_t ta[8] = {0}, tb[8] = {0}, td[16];                                              \
            memcpy(ta, aa + i, n - i);                                                             \
            memcpy(tb, bb + i, n - i);                                                             \
            __m256 x = ld_##fmt(ta);                                                               \
            __m256 y = ld_##fmt(tb);                                                               \
            _mm_storeu_si128((__m128i *)td, pack8(enc_##fmt(VEXPR)));                              \
            memcpy(dd + i, td, n - i);                                                             \
        }                                                                                          \
    }

#define FP8_AVX2_KERNELS(fmt)                                                                      \
    FP8_AVX2_KERNEL(fmt, sum, _mm256_add_ps(x, y))                                                 \
    FP8_AVX2_KERNEL(fmt, prod, _mm256_mul_ps(x, y))

FP8_AVX2_KERNELS(e4m3)
FP8_AVX2_KERNELS(e5m2)

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

static inline void st_e4m3(uint8_t *p, __m256 v)
{
    _mm_storel_epi64((__m128i *)p, pack8(enc_e4m3(v)));
}

static inline void st_e5m2(uint8_t *p, __m256 v)
{
    _mm_storel_epi64((__m128i *)p, pack8(enc_e5m2(v)));
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
AVG_256(e4m3, uint8_t)
AVG_256(e5m2, uint8_t)
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
