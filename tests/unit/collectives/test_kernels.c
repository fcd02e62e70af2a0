/*
 * Reduction kernels against an independent reference: every datatype x operator, random and
 * special values (NaN, infinities, signed zeros, subnormals, integer extremes), lengths around
 * the vector widths, unaligned and in-place buffers; the fp16/bf16 conversions exhaustively;
 * the fp8 conversions exhaustively; every vector kernel set bitwise against the scalar one.
 *
 * The reference decodes fp16/bf16 with ldexp and rounds with nearbyint in double precision,
 * sharing no code with the library's bit-twiddling conversions.
 */
#include <criterion/criterion.h>
#include <fenv.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "collectives/coll_kernels.h"

#define MAXN 1100

static const size_t lengths[] = {0,  1,  2,  3,  7,  8,  9,  15,  16,
                                 17, 31, 32, 33, 63, 64, 65, 257, 1027};
#define NLENGTHS (sizeof(lengths) / sizeof(lengths[0]))

static const char *const op_names[] = {"sum", "prod", "min", "max", "avg"};

/* ------------------------------------------------------------------ reference arithmetic */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* A 2-byte float format: mbits explicit mantissa bits, exponent bias. */
struct fmt16 {
    int mbits;
    int bias;
};

static const struct fmt16 HALF = {10, 15};
static const struct fmt16 BF16 = {7, 127};

static double ref_decode(struct fmt16 f, uint16_t bits)
{
    int ebits  = 15 - f.mbits;
    int sign   = bits >> 15;
    int e      = (bits >> f.mbits) & ((1 << ebits) - 1);
    uint32_t m = bits & ((1u << f.mbits) - 1);
    double v;

    if (e == (1 << ebits) - 1) {
        v = m != 0 ? NAN : INFINITY;
    } else if (e == 0) {
        v = ldexp((double)m, 1 - f.bias - f.mbits);
    } else {
        v = ldexp((double)(m | (1u << f.mbits)), e - f.bias - f.mbits);
    }
    return sign ? -v : v;
}

/* Rounds v to the format, nearest-even, overflow to infinity. NaN gives a quiet NaN. */
static uint16_t ref_encode(struct fmt16 f, double v)
{
    int ebits     = 15 - f.mbits;
    uint16_t sign = signbit(v) ? 0x8000 : 0;
    uint16_t inf  = (uint16_t)(((1u << ebits) - 1) << f.mbits);
    double a      = fabs(v);
    int emin      = 1 - f.bias;
    int k;
    double r;

    if (isnan(v)) {
        return (uint16_t)(sign | inf | (1u << (f.mbits - 1)));
    }
    if (isinf(v)) {
        return (uint16_t)(sign | inf);
    }
    frexp(a, &k);
    if (a == 0 || k - 1 < emin) {
        /* Subnormal (or zero); a rounded-up result of 1 << mbits is the smallest normal. */
        r = nearbyint(ldexp(a, f.bias - 1 + f.mbits));
        return (uint16_t)(sign | (uint16_t)r);
    }
    k -= 1;
    r = nearbyint(ldexp(a, f.mbits - k));
    if (r == ldexp(1.0, f.mbits + 1)) {
        k++;
        r = ldexp(1.0, f.mbits);
    }
    if (k > f.bias) {
        return (uint16_t)(sign | inf);
    }
    return (uint16_t)(sign | (uint16_t)((k + f.bias) << f.mbits) |
                      ((uint16_t)r & ((1u << f.mbits) - 1)));
}

static bool lowp_is_nan(struct fmt16 f, uint16_t bits)
{
    return isnan(ref_decode(f, bits));
}

/* An OCP 8-bit float format: e4m3 has no infinities and one NaN code per sign (S.1111.111),
 * e5m2 is IEEE-like. */
struct fmt8 {
    int mbits;
    int bias;
    bool ieee;
};

static const struct fmt8 E4M3 = {3, 7, false};
static const struct fmt8 E5M2 = {2, 15, true};

static double ref_decode8(struct fmt8 f, uint8_t bits)
{
    int emax   = (1 << (7 - f.mbits)) - 1;
    int e      = (bits & 0x7f) >> f.mbits;
    uint32_t m = bits & ((1u << f.mbits) - 1);
    double v;

    if (f.ieee && e == emax) {
        v = m != 0 ? NAN : INFINITY;
    } else if (!f.ieee && (bits & 0x7f) == 0x7f) {
        v = NAN;
    } else if (e == 0) {
        v = ldexp((double)m, 1 - f.bias - f.mbits);
    } else {
        v = ldexp((double)(m | (1u << f.mbits)), e - f.bias - f.mbits);
    }
    return (bits & 0x80) ? -v : v;
}

/* Rounds v to the format, nearest-even; e4m3 saturates to +-448 (infinities too), e5m2
 * overflows to infinity. NaN gives the format's quiet NaN. */
static uint8_t ref_encode8(struct fmt8 f, double v)
{
    uint8_t sign     = signbit(v) ? 0x80 : 0;
    unsigned maxcode = f.ieee ? 0x7c : 0x7e;
    double a         = fabs(v);
    unsigned code;
    double r;
    int k;

    if (isnan(v)) {
        return (uint8_t)(sign | (f.ieee ? 0x7e : 0x7f));
    }
    if (isinf(v)) {
        return (uint8_t)(sign | maxcode);
    }
    frexp(a, &k);
    if (a == 0 || k - 1 < 1 - f.bias) {
        r = nearbyint(ldexp(a, f.bias - 1 + f.mbits));
        return (uint8_t)(sign | (unsigned)r);
    }
    k -= 1;
    r = nearbyint(ldexp(a, f.mbits - k));
    if (r == ldexp(1.0, f.mbits + 1)) {
        k++;
        r = ldexp(1.0, f.mbits);
    }
    if (k + f.bias > 31) {
        return (uint8_t)(sign | maxcode);
    }
    code = (unsigned)(k + f.bias) << f.mbits | ((unsigned)r & ((1u << f.mbits) - 1));
    return (uint8_t)(sign | (code > maxcode ? maxcode : code));
}

static bool fp8_is_nan(struct fmt8 f, uint8_t bits)
{
    return isnan(ref_decode8(f, bits));
}

static double ref_minmax(double x, double y, bool max)
{
    if (isnan(x)) {
        return x;
    }
    if (isnan(y)) {
        return y;
    }
    return max ? (x > y ? x : y) : (x < y ? x : y);
}

/* fp16/bf16: widen to fp32, apply the op in fp32, round once (AVG: sum / n in fp32). */
static uint16_t ref_lowp(struct fmt16 f, uint16_t a, uint16_t b, int op, int nranks)
{
    float x = (float)ref_decode(f, a);
    float y = (float)ref_decode(f, b);
    float r;

    switch (op) {
    case FX_SUM:
        r = x + y;
        break;
    case FX_PROD:
        r = x * y;
        break;
    case FX_MIN:
        r = (float)ref_minmax(x, y, false);
        break;
    case FX_MAX:
        r = (float)ref_minmax(x, y, true);
        break;
    default:
        r = (x + y) / (float)nranks;
        break;
    }
    return ref_encode(f, r);
}

/* fp8: widen to fp32, apply the op in fp32, round once (AVG: sum / n in fp32). */
static uint8_t ref_fp8(struct fmt8 f, uint8_t a, uint8_t b, int op, int nranks)
{
    float x = (float)ref_decode8(f, a);
    float y = (float)ref_decode8(f, b);
    float r;

    switch (op) {
    case FX_SUM:
        r = x + y;
        break;
    case FX_PROD:
        r = x * y;
        break;
    case FX_MIN:
        r = (float)ref_minmax(x, y, false);
        break;
    case FX_MAX:
        r = (float)ref_minmax(x, y, true);
        break;
    default:
        r = (x + y) / (float)nranks;
        break;
    }
    return ref_encode8(f, r);
}

/* Integers as 64-bit patterns of `bits` width: wrap, signed or unsigned compare. */
static uint64_t ref_int(uint64_t a, uint64_t b, int bits, bool is_signed, int op, int nranks)
{
    uint64_t mask = bits == 64 ? ~0ull : (1ull << bits) - 1;
    int64_t sa    = (int64_t)(a << (64 - bits)) >> (64 - bits);
    int64_t sb    = (int64_t)(b << (64 - bits)) >> (64 - bits);
    uint64_t r;

    switch (op) {
    case FX_SUM:
        return (a + b) & mask;
    case FX_PROD:
        return (a * b) & mask;
    case FX_MIN:
        return is_signed ? (sa < sb ? a : b) : (a < b ? a : b);
    case FX_MAX:
        return is_signed ? (sa > sb ? a : b) : (a > b ? a : b);
    default:
        r = (a + b) & mask;
        if (is_signed) {
            int64_t s = (int64_t)(r << (64 - bits)) >> (64 - bits);

            return (uint64_t)(s / nranks) & mask;
        }
        return r / (uint64_t)nranks;
    }
}

static double ref_float(double x, double y, int op, int nranks, bool single)
{
    switch (op) {
    case FX_SUM:
        return single ? (double)((float)x + (float)y) : x + y;
    case FX_PROD:
        return single ? (double)((float)x * (float)y) : x * y;
    case FX_MIN:
        return ref_minmax(x, y, false);
    case FX_MAX:
        return ref_minmax(x, y, true);
    default:
        return single ? (double)(((float)x + (float)y) / (float)nranks) : (x + y) / nranks;
    }
}

/* ------------------------------------------------------------------ element access */

static uint64_t load_bits(const void *p, size_t i, size_t es)
{
    uint64_t v = 0;

    memcpy(&v, (const uint8_t *)p + i * es, es);
    return v;
}

static bool dtype_is_signed(fx_datatype dt)
{
    return dt == FX_INT8 || dt == FX_INT32 || dt == FX_INT64;
}

static int dtype_bits(fx_datatype dt)
{
    return (int)fx_datatype_size(dt) * 8;
}

/* The reference result of one element as raw bits; *nan set when any NaN is acceptable. */
static uint64_t ref_elem(fx_datatype dt, uint64_t a, uint64_t b, int op, int nranks, bool *nan)
{
    *nan = false;
    switch (dt) {
    case FX_FLOAT8_E4M3:
    case FX_FLOAT8_E5M2: {
        struct fmt8 f = dt == FX_FLOAT8_E4M3 ? E4M3 : E5M2;
        uint8_t r     = ref_fp8(f, (uint8_t)a, (uint8_t)b, op, nranks);

        *nan = fp8_is_nan(f, r);
        return r;
    }
    case FX_FLOAT16:
    case FX_BFLOAT16: {
        struct fmt16 f = dt == FX_FLOAT16 ? HALF : BF16;
        uint16_t r     = ref_lowp(f, (uint16_t)a, (uint16_t)b, op, nranks);

        *nan = lowp_is_nan(f, r);
        return r;
    }
    case FX_FLOAT32: {
        float x, y, r;
        uint32_t ua = (uint32_t)a, ub = (uint32_t)b, ur;

        memcpy(&x, &ua, 4);
        memcpy(&y, &ub, 4);
        r    = (float)ref_float(x, y, op, nranks, true);
        *nan = isnan(r);
        memcpy(&ur, &r, 4);
        return ur;
    }
    case FX_FLOAT64: {
        double x, y, r;
        uint64_t ur;

        memcpy(&x, &a, 8);
        memcpy(&y, &b, 8);
        r    = ref_float(x, y, op, nranks, false);
        *nan = isnan(r);
        memcpy(&ur, &r, 8);
        return ur;
    }
    default:
        return ref_int(a, b, dtype_bits(dt), dtype_is_signed(dt), op, nranks);
    }
}

static bool elem_is_nan(fx_datatype dt, uint64_t bits)
{
    switch (dt) {
    case FX_FLOAT8_E4M3:
        return fp8_is_nan(E4M3, (uint8_t)bits);
    case FX_FLOAT8_E5M2:
        return fp8_is_nan(E5M2, (uint8_t)bits);
    case FX_FLOAT16:
        return lowp_is_nan(HALF, (uint16_t)bits);
    case FX_BFLOAT16:
        return lowp_is_nan(BF16, (uint16_t)bits);
    case FX_FLOAT32:
        return (bits & 0x7fffffffu) > 0x7f800000u;
    case FX_FLOAT64:
        return (bits & 0x7fffffffffffffffull) > 0x7ff0000000000000ull;
    default:
        return false;
    }
}

/* ------------------------------------------------------------------ test data */

/* Special values per datatype, as raw bits. */
static size_t specials(fx_datatype dt, uint64_t *out)
{
    static const uint64_t f16[]  = {0x0000, 0x8000, 0x0001, 0x8001, 0x03ff, 0x0400, 0x3c00, 0xbc00,
                                    0x7bff, 0xfbff, 0x7c00, 0xfc00, 0x7e00, 0x7c01, 0x3555, 0x7800};
    static const uint64_t bf16[] = {0x0000, 0x8000, 0x0001, 0x807f, 0x0080, 0x3f80, 0xbf80, 0x7f7f,
                                    0xff7f, 0x7f80, 0xff80, 0x7fc0, 0x7f81, 0x3eab, 0x4049, 0x0100};
    static const uint64_t f32[]  = {0x00000000, 0x80000000, 0x00000001, 0x007fffff,
                                    0x00800000, 0x3f800000, 0xbf800000, 0x7f7fffff,
                                    0xff7fffff, 0x7f800000, 0xff800000, 0x7fc00000,
                                    0x7f800001, 0xffc00123, 0x3eaaaaab, 0x4b800000};
    static const uint64_t f64[]  = {0x0ull,
                                    0x8000000000000000ull,
                                    0x1ull,
                                    0x000fffffffffffffull,
                                    0x3ff0000000000000ull,
                                    0xbff0000000000000ull,
                                    0x7fefffffffffffffull,
                                    0xffefffffffffffffull,
                                    0x7ff0000000000000ull,
                                    0xfff0000000000000ull,
                                    0x7ff8000000000000ull,
                                    0x7ff0000000000001ull,
                                    0x3fd5555555555555ull,
                                    0x4340000000000000ull};
    static const uint64_t e4m3[] = {0x00, 0x80, 0x01, 0x81, 0x07, 0x08, 0x38, 0xb8,
                                    0x7e, 0xfe, 0x7f, 0xff, 0x77, 0x3c, 0x0f, 0x40};
    static const uint64_t e5m2[] = {0x00, 0x80, 0x01, 0x81, 0x03, 0x04, 0x3c, 0xbc,
                                    0x7b, 0xfb, 0x7c, 0xfc, 0x7e, 0x7d, 0x3e, 0x44};
    const uint64_t *src;
    size_t n;

    switch (dt) {
    case FX_FLOAT8_E4M3:
        src = e4m3;
        n   = sizeof(e4m3) / 8;
        break;
    case FX_FLOAT8_E5M2:
        src = e5m2;
        n   = sizeof(e5m2) / 8;
        break;
    case FX_FLOAT16:
        src = f16;
        n   = sizeof(f16) / 8;
        break;
    case FX_BFLOAT16:
        src = bf16;
        n   = sizeof(bf16) / 8;
        break;
    case FX_FLOAT32:
        src = f32;
        n   = sizeof(f32) / 8;
        break;
    case FX_FLOAT64:
        src = f64;
        n   = sizeof(f64) / 8;
        break;
    default: {
        int bits      = dtype_bits(dt);
        uint64_t mask = bits == 64 ? ~0ull : (1ull << bits) - 1;
        uint64_t top  = 1ull << (bits - 1);

        out[0] = 0;
        out[1] = 1;
        out[2] = mask;    /* -1 or the unsigned maximum */
        out[3] = top;     /* signed minimum */
        out[4] = top - 1; /* signed maximum */
        out[5] = (top + 1) & mask;
        out[6] = 2;
        out[7] = (mask - 1) & mask;
        return 8;
    }
    }
    memcpy(out, src, n * sizeof(*src));
    return n;
}

/* Mostly random bit patterns (every class of value shows up), some specials, some small
 * "nice" numbers so that sums and products stay finite. */
static void fill(fx_datatype dt, void *buf, size_t n)
{
    size_t es = fx_datatype_size(dt);
    uint64_t sp[16];
    size_t nsp = specials(dt, sp);

    for (size_t i = 0; i < n; i++) {
        uint64_t v    = rnd();
        uint64_t pick = rnd() % 8;

        if (pick == 0) {
            v = sp[rnd() % nsp];
        } else if (pick <= 3 && (dt == FX_FLOAT32 || dt == FX_FLOAT16 || dt == FX_BFLOAT16)) {
            float f = (float)((int)(rnd() % 2001) - 1000) / 16.0f;
            uint32_t u;

            memcpy(&u, &f, 4);
            v = dt == FX_FLOAT32 ? u : ref_encode(dt == FX_FLOAT16 ? HALF : BF16, f);
        } else if (pick <= 3 && (dt == FX_FLOAT8_E4M3 || dt == FX_FLOAT8_E5M2)) {
            float f = (float)((int)(rnd() % 33) - 16) / 4.0f;

            v = ref_encode8(dt == FX_FLOAT8_E4M3 ? E4M3 : E5M2, f);
        } else if (pick <= 3 && dt == FX_FLOAT64) {
            double d = (double)((int)(rnd() % 2001) - 1000) / 16.0;

            memcpy(&v, &d, 8);
        }
        memcpy((uint8_t *)buf + i * es, &v, es);
    }
}

/* ------------------------------------------------------------------ checks */

/* Runs one kernel call (op 4 = AVG through fx_coll_reduce_final) and compares every element
 * with the reference. Returns the number of wrong elements (the first few are reported). */
static size_t check_op(fx_datatype dt, int op, size_t n, int offset, bool in_place, int nranks)
{
    static uint8_t abuf[MAXN * 8 + 64], bbuf[MAXN * 8 + 64], dbuf[MAXN * 8 + 64];
    static uint8_t a0[MAXN * 8];
    size_t es    = fx_datatype_size(dt);
    uint8_t *a   = abuf + offset * es % 61;
    uint8_t *b   = bbuf + offset;
    uint8_t *d   = in_place ? a : dbuf + (offset * 3) % 7;
    size_t wrong = 0;

    fill(dt, a, n);
    fill(dt, b, n);
    memcpy(a0, a, n * es);
    memset(d == a ? dbuf : d, 0xee, n * es);
    if (op == FX_AVG) {
        fx_coll_reduce_final(d, a, b, n, dt, FX_AVG, nranks);
    } else {
        fx_coll_reduce(d, a, b, n, dt, (fx_op)op);
    }
    for (size_t i = 0; i < n; i++) {
        bool any_nan;
        uint64_t want =
            ref_elem(dt, load_bits(a0, i, es), load_bits(b, i, es), op, nranks, &any_nan);
        uint64_t got = load_bits(d, i, es);

        if (any_nan ? !elem_is_nan(dt, got) : got != want) {
            if (wrong < 4) {
                cr_log_error("%s %s n=%zu i=%zu: a=%#llx b=%#llx got %#llx want %#llx",
                             fx_datatype_name(dt), op_names[op], n, i,
                             (unsigned long long)load_bits(a0, i, es),
                             (unsigned long long)load_bits(b, i, es), (unsigned long long)got,
                             (unsigned long long)want);
            }
            wrong++;
        }
    }
    return wrong;
}

static void matrix(void)
{
    for (int dt = 0; dt < FX_NUM_DATATYPES; dt++) {
        for (int op = 0; op < FX_NUM_OPS; op++) {
            size_t wrong = 0;

            for (size_t l = 0; l < NLENGTHS; l++) {
                wrong += check_op((fx_datatype)dt, op, lengths[l], (int)l, false, 3);
                wrong += check_op((fx_datatype)dt, op, lengths[l], (int)l + 1, true, 4);
            }
            cr_expect_eq(wrong, 0, "%s %s (%s kernels): %zu wrong elements",
                         fx_datatype_name((fx_datatype)dt), op_names[op], fx_coll_kernel_isa(),
                         wrong);
        }
    }
}

static void use(enum fx_coll_kset set)
{
    char err[256] = "";

    cr_assert_eq(fx_coll_kernels_select(set, err, sizeof(err)), FX_OK, "%s", err);
}

Test(kernels, every_datatype_and_op_matches_reference_default_isa, .timeout = 60)
{
    use(FX_KSET_AUTO);
    matrix();
}

Test(kernels, every_datatype_and_op_matches_reference_scalar, .timeout = 60)
{
    use(FX_KSET_SCALAR);
    cr_assert_str_eq(fx_coll_kernel_isa(), "scalar");
    matrix();
}

Test(kernels, every_datatype_and_op_matches_reference_avx2, .timeout = 60)
{
    if (!fx_coll_kset_available(FX_KSET_AVX2)) {
        cr_skip_test("this CPU has no AVX2+F16C");
    }
    use(FX_KSET_AVX2);
    cr_assert_str_eq(fx_coll_kernel_isa(), "avx2");
    matrix();
}

Test(kernels, every_datatype_and_op_matches_reference_avx512, .timeout = 60)
{
    if (!fx_coll_kset_available(FX_KSET_AVX512)) {
        cr_skip_test("this CPU has no AVX-512 F/BW/VL");
    }
    use(FX_KSET_AVX512);
    cr_assert_str_eq(fx_coll_kernel_isa(), "avx512");
    matrix();
}

Test(kernels, avg_over_many_ranks_matches_reference, .timeout = 60)
{
    static const int counts[] = {2, 3, 7, 8, 64, 1000};

    for (int dt = 0; dt < FX_NUM_DATATYPES; dt++) {
        for (size_t c = 0; c < sizeof(counts) / sizeof(counts[0]); c++) {
            size_t wrong = check_op((fx_datatype)dt, FX_AVG, 257, (int)c, false, counts[c]);

            cr_expect_eq(wrong, 0, "%s avg over %d ranks: %zu wrong",
                         fx_datatype_name((fx_datatype)dt), counts[c], wrong);
        }
    }
}

/* One (dtype, op, n) through scalar and through set from offset-shifted buffers; returns the
 * number of elements that differ, NaN payloads aside. */
static size_t agree(enum fx_coll_kset set, fx_datatype dt, int op, size_t n, size_t off)
{
    enum { N = 1031 };
    static uint8_t a[N * 8 + 16], b[N * 8 + 16], d1[N * 8 + 16],
        d2[N * 8 + 16]; /* offsets up to 10 */
    size_t es    = fx_datatype_size(dt);
    size_t wrong = 0;

    fill(dt, a + off, n);
    fill(dt, b + off + 1, n);
    use(FX_KSET_SCALAR);
    fx_coll_reduce_final(d1 + off, a + off, b + off + 1, n, dt, (fx_op)op, 5);
    use(set);
    fx_coll_reduce_final(d2 + off + 3, a + off, b + off + 1, n, dt, (fx_op)op, 5);
    for (size_t i = 0; i < n; i++) {
        uint64_t x = load_bits(d1 + off, i, es), y = load_bits(d2 + off + 3, i, es);

        if (x != y && !(elem_is_nan(dt, x) && elem_is_nan(dt, y)) && wrong++ < 4) {
            cr_log_error("%s %s n=%zu element %zu: a %#llx b %#llx: scalar %#llx, %s %#llx",
                         fx_datatype_name(dt), op_names[op], n, i,
                         (unsigned long long)load_bits(a + off, i, es),
                         (unsigned long long)load_bits(b + off + 1, i, es), (unsigned long long)x,
                         fx_coll_kernel_isa(), (unsigned long long)y);
        }
    }
    return wrong;
}

/* Every vector set must agree with scalar bit for bit, NaN payloads aside (which operand's
 * payload a NaN result carries is up to the compiler's operand order), for every length 0..67
 * and a large unaligned one. Ranks get identical results anyway: each element's final value is
 * computed on one rank and distributed. */
static void sets_agree(enum fx_coll_kset set)
{
    if (!fx_coll_kset_available(set)) {
        cr_skip_test("this CPU lacks the features of this kernel set");
    }
    for (int dt = 0; dt < FX_NUM_DATATYPES; dt++) {
        for (int op = 0; op < FX_NUM_OPS; op++) {
            size_t wrong = 0;

            for (size_t n = 0; n <= 67; n++) {
                wrong += agree(set, (fx_datatype)dt, op, n, n % 8);
            }
            for (int round = 0; round < 4; round++) {
                wrong += agree(set, (fx_datatype)dt, op, 1031, (size_t)round * 2 + 1);
            }
            cr_expect_eq(wrong, 0, "%s %s: scalar and %s differ in %zu elements",
                         fx_datatype_name((fx_datatype)dt), op_names[op], fx_coll_kernel_isa(),
                         wrong);
        }
    }
}

Test(kernels, scalar_and_avx2_kernels_agree_bitwise, .timeout = 60)
{
    sets_agree(FX_KSET_AVX2);
}

Test(kernels, scalar_and_avx512_kernels_agree_bitwise, .timeout = 60)
{
    sets_agree(FX_KSET_AVX512);
}

Test(kernels, every_datatype_and_op_matches_reference_avx512fp16, .timeout = 60)
{
    if (!fx_coll_kset_available(FX_KSET_AVX512FP16)) {
        cr_skip_test("this CPU has no AVX-512 FP16 and VBMI");
    }
    use(FX_KSET_AVX512FP16);
    cr_assert_str_eq(fx_coll_kernel_isa(), "avx512fp16");
    matrix();
}

Test(kernels, scalar_and_avx512fp16_kernels_agree_bitwise, .timeout = 60)
{
    sets_agree(FX_KSET_AVX512FP16);
}

/* Every pair of codes (a the high byte of the index, b the low one) through one op of the set
 * in use, from unaligned buffers, against the reference; NaN where the reference gives a NaN.
 * Returns the number of wrong elements. */
static size_t fp8_all_pairs(fx_datatype dt, int op, int nranks, size_t off)
{
    static uint8_t a[65536 + 64], b[65536 + 64], d[65536 + 64];
    size_t wrong = 0;

    for (size_t i = 0; i < 65536; i++) {
        a[off + i]     = (uint8_t)(i >> 8);
        b[off + 1 + i] = (uint8_t)i;
    }
    fx_coll_reduce_final(d + off + 2, a + off, b + off + 1, 65536, dt, (fx_op)op, nranks);
    for (size_t i = 0; i < 65536; i++) {
        bool any_nan;
        uint64_t want = ref_elem(dt, i >> 8, i & 0xff, op, nranks, &any_nan);
        uint8_t got   = d[off + 2 + i];

        if (any_nan ? !elem_is_nan(dt, got) : got != want) {
            if (wrong++ < 4) {
                cr_log_error("%s %s (%s, %d ranks): %#04zx, %#04zx gives %#04x, want %#04llx",
                             fx_datatype_name(dt), op_names[op], fx_coll_kernel_isa(), nranks,
                             i >> 8, i & 0xff, got, (unsigned long long)want);
            }
        }
    }
    return wrong;
}

/* fp8 exhaustively: all 65536 operand pairs, every op, every kernel set this CPU runs; AVG over
 * every power of two a rank count can be (kernels may take a shortcut there), every other count
 * up to 130 and some larger ones (the kernels round those quotients to odd into binary16). */
Test(kernels, fp8_every_pair_of_codes_matches_reference_in_every_set, .timeout = 240)
{
    static const int others[]      = {1000,          4095,          12345,      65535,     3 << 20,
                                      (1 << 24) - 1, (1 << 24) + 2, 1000000007, 0x7fffffff};
    static const fx_datatype dts[] = {FX_FLOAT8_E4M3, FX_FLOAT8_E5M2};
    int ranks[30 + 130 + sizeof(others) / sizeof(others[0])];
    size_t nranks = 0;

    for (int e = 1; e <= 30; e++) {
        ranks[nranks++] = 1 << e;
    }
    for (int n = 3; n <= 130; n++) {
        if ((n & (n - 1)) != 0) {
            ranks[nranks++] = n;
        }
    }
    for (size_t i = 0; i < sizeof(others) / sizeof(others[0]); i++) {
        ranks[nranks++] = others[i];
    }
    for (int set = FX_KSET_SCALAR; set < FX_KSET_COUNT; set++) {
        if (!fx_coll_kset_available((enum fx_coll_kset)set)) {
            continue;
        }
        use((enum fx_coll_kset)set);
        for (size_t t = 0; t < 2; t++) {
            for (int op = 0; op < FX_NUM_OPS; op++) {
                size_t nr    = op == FX_AVG ? nranks : 1;
                size_t wrong = 0;

                for (size_t r = 0; r < nr; r++) {
                    wrong += fp8_all_pairs(dts[t], op, ranks[r], (r + (size_t)op) % 8);
                }
                cr_expect_eq(wrong, 0, "%s %s (%s kernels): %zu wrong", fx_datatype_name(dts[t]),
                             op_names[op], fx_coll_kernel_isa(), wrong);
            }
        }
    }
}

/* Operands for one fp16 or bf16 check: every pair of special values and of values whose sum
 * is a tie (1 + half an ulp, its neighbours, subnormal + subnormal), then random bit patterns.
 * Returns the number of elements written. */
static size_t lowp_operands(fx_datatype dt, uint16_t *a, uint16_t *b, size_t cap)
{
    static const uint16_t f16_ties[]  = {0x3c00, 0x1000, 0x3c01, 0x1001, 0x0fff, 0x0200, 0x83ff};
    static const uint16_t bf16_ties[] = {0x3f80, 0x3b80, 0x3f81, 0x3b81, 0x3b7f, 0x0040, 0x807f};
    const uint16_t *ties              = dt == FX_FLOAT16 ? f16_ties : bf16_ties;
    uint16_t vals[32];
    uint64_t sp[16];
    size_t nsp = specials(dt, sp);
    size_t nv  = 0;
    size_t n   = 0;

    for (size_t i = 0; i < nsp; i++) {
        vals[nv++] = (uint16_t)sp[i];
    }
    for (size_t i = 0; i < 7; i++) {
        vals[nv++] = ties[i];
        vals[nv++] = (uint16_t)(ties[i] ^ 0x8000);
    }
    for (size_t i = 0; i < nv; i++) {
        for (size_t j = 0; j < nv; j++) {
            a[n]   = vals[i];
            b[n++] = vals[j];
        }
    }
    while (n < cap) {
        a[n]   = (uint16_t)rnd();
        b[n++] = (uint16_t)rnd();
    }
    return n;
}

/* One fp16/bf16 op of the set in use on n elements from unaligned (odd byte) pointers against
 * the reference; returns the number of wrong elements. */
static size_t lowp_check(fx_datatype dt, int op, int nranks, const uint16_t *a0, const uint16_t *b0,
                         size_t n, size_t off)
{
    static uint8_t abuf[2 * 70000 + 16], bbuf[2 * 70000 + 16], dbuf[2 * 70000 + 16];
    uint8_t *a   = abuf + 1 + off;
    uint8_t *b   = bbuf + 3 + off;
    uint8_t *d   = dbuf + 5 + off;
    size_t wrong = 0;

    memcpy(a, a0, n * 2);
    memcpy(b, b0, n * 2);
    fx_coll_reduce_final(d, a, b, n, dt, (fx_op)op, nranks);
    for (size_t i = 0; i < n; i++) {
        bool any_nan;
        uint64_t want = ref_elem(dt, a0[i], b0[i], op, nranks, &any_nan);
        uint64_t got  = load_bits(d, i, 2);

        if (any_nan ? !elem_is_nan(dt, got) : got != want) {
            if (wrong++ < 4) {
                cr_log_error("%s %s (%s, %d ranks) n=%zu: %#06x, %#06x gives %#06llx, want %#06llx",
                             fx_datatype_name(dt), op_names[op], fx_coll_kernel_isa(), nranks, n,
                             a0[i], b0[i], (unsigned long long)got, (unsigned long long)want);
            }
        }
    }
    return wrong;
}

/* fp16 and bf16 in every kernel set: all pairs of special and tie values plus 65536 random
 * pairs in one call, and the same data at tail lengths, from unaligned pointers, every op (AVG
 * over 2, 3, 4 and 2^20 ranks). */
Test(kernels, fp16_bf16_specials_ties_and_random_match_reference_in_every_set, .timeout = 120)
{
    static const size_t tails[]    = {0, 1, 7, 31, 33, 1023};
    static const int ranks[]       = {2, 3, 4, 1 << 20};
    static const fx_datatype dts[] = {FX_FLOAT16, FX_BFLOAT16};
    static uint16_t a[70000], b[70000];

    for (int set = FX_KSET_SCALAR; set < FX_KSET_COUNT; set++) {
        if (!fx_coll_kset_available((enum fx_coll_kset)set)) {
            continue;
        }
        use((enum fx_coll_kset)set);
        for (size_t t = 0; t < 2; t++) {
            size_t n = lowp_operands(dts[t], a, b, 70000);

            for (int op = 0; op < FX_NUM_OPS; op++) {
                size_t nr    = op == FX_AVG ? sizeof(ranks) / sizeof(ranks[0]) : 1;
                size_t wrong = 0;

                for (size_t r = 0; r < nr; r++) {
                    wrong += lowp_check(dts[t], op, ranks[r], a, b, n, r);
                    for (size_t l = 0; l < sizeof(tails) / sizeof(tails[0]); l++) {
                        wrong +=
                            lowp_check(dts[t], op, ranks[r], a + l * 97, b + l * 97, tails[l], l);
                    }
                }
                cr_expect_eq(wrong, 0, "%s %s (%s kernels): %zu wrong", fx_datatype_name(dts[t]),
                             op_names[op], fx_coll_kernel_isa(), wrong);
            }
        }
    }
}

/* The AVX-512 FP16 set's fp16 SUM and PROD (binary16 arithmetic) against the AVX-512 set's
 * (fp32, then one rounding: checked against the reference above) for all 2^32 operand pairs;
 * where one gives a NaN the other must too. */
Test(kernels, fp16_binary16_sum_and_prod_equal_fp32_rounding_for_all_pairs, .timeout = 240)
{
    static uint16_t a[65536], b[65536], d1[65536], d2[65536];
    static const fx_op ops[] = {FX_SUM, FX_PROD};

    if (!fx_coll_kset_available(FX_KSET_AVX512FP16)) {
        cr_skip_test("this CPU has no AVX-512 FP16 and VBMI");
    }
    for (uint32_t i = 0; i < 65536; i++) {
        b[i] = (uint16_t)i;
    }
    for (size_t o = 0; o < 2; o++) {
        fx_reduce_fn f32_path, f16_path;
        size_t wrong = 0;

        use(FX_KSET_AVX512);
        f32_path = fx_coll_reduce_fn(FX_FLOAT16, ops[o]);
        use(FX_KSET_AVX512FP16);
        f16_path = fx_coll_reduce_fn(FX_FLOAT16, ops[o]);
        for (uint32_t x = 0; x < 65536; x++) {
            for (uint32_t i = 0; i < 65536; i++) {
                a[i] = (uint16_t)x;
            }
            f32_path(d1, a, b, 65536);
            f16_path(d2, a, b, 65536);
            if (memcmp(d1, d2, sizeof(d1)) == 0) {
                continue;
            }
            for (uint32_t i = 0; i < 65536; i++) {
                if (d1[i] != d2[i] && !(lowp_is_nan(HALF, d1[i]) && lowp_is_nan(HALF, d2[i])) &&
                    wrong++ < 4) {
                    cr_log_error("fp16 %s %#06x, %#06x: fp32 path %#06x, binary16 %#06x",
                                 op_names[ops[o]], x, i, d1[i], d2[i]);
                }
            }
        }
        cr_expect_eq(wrong, 0, "fp16 %s: %zu of 2^32 pairs differ", op_names[ops[o]], wrong);
    }
}

/* A set is selectable exactly when the CPU has its features; otherwise the error names one. */
Test(kernels, selecting_a_kernel_set_follows_cpu_features, .timeout = 10)
{
    static const char *const names[] = {"auto", "scalar", "avx2", "avx512", "avx512fp16"};
    enum fx_coll_kset set;

    __builtin_cpu_init();
    for (int i = 0; i < FX_KSET_COUNT; i++) {
        char err[256] = "";
        fx_status st;

        cr_assert(fx_coll_kset_parse(names[i], &set));
        cr_assert_eq((int)set, i);
        st = fx_coll_kernels_select(set, err, sizeof(err));
        if (fx_coll_kset_available(set)) {
            cr_expect_eq(st, FX_OK, "%s: %s", names[i], err);
        } else {
            cr_expect_eq(st, FX_ERR_UNSUPPORTED, "%s", names[i]);
            cr_expect(strstr(err, "lacks") != NULL, "message %s", err);
        }
    }
    cr_expect_eq(fx_coll_kset_available(FX_KSET_AVX512),
                 __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                     __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx2") &&
                     __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma"));
    cr_expect_eq(fx_coll_kset_available(FX_KSET_AVX512FP16),
                 fx_coll_kset_available(FX_KSET_AVX512) && __builtin_cpu_supports("avx512fp16") &&
                     __builtin_cpu_supports("avx512vbmi"));
    cr_expect(!fx_coll_kset_parse("avx9", &set));
    cr_expect(!fx_coll_kset_parse(NULL, &set));
    cr_expect_eq(fx_coll_kernels_select(FX_KSET_COUNT, NULL, 0), FX_ERR_INVALID_ARG);
}

/* ------------------------------------------------------------------ conversions */

Test(kernels, half_to_float_is_exact_for_all_65536_values, .timeout = 30)
{
    size_t wrong = 0;

    for (uint32_t h = 0; h < 65536; h++) {
        double want = ref_decode(HALF, (uint16_t)h);
        float got   = fx_half_to_float((uint16_t)h);

        if (isnan(want) ? !isnan(got) : ((double)got != want || !signbit(got) != !signbit(want))) {
            if (wrong++ < 4) {
                cr_log_error("half %#06x: got %a want %a", h, (double)got, want);
            }
        }
    }
    cr_expect_eq(wrong, 0, "%zu of 65536 halves decode wrongly", wrong);
}

Test(kernels, bf16_to_float_is_exact_for_all_65536_values, .timeout = 30)
{
    size_t wrong = 0;

    for (uint32_t h = 0; h < 65536; h++) {
        double want = ref_decode(BF16, (uint16_t)h);
        float got   = fx_bf16_to_float((uint16_t)h);

        if (isnan(want) ? !isnan(got) : ((double)got != want || !signbit(got) != !signbit(want))) {
            if (wrong++ < 4) {
                cr_log_error("bf16 %#06x: got %a want %a", h, (double)got, want);
            }
        }
    }
    cr_expect_eq(wrong, 0, "%zu of 65536 bf16 values decode wrongly", wrong);
}

/* Every value, every midpoint between neighbours (ties go to even) and points just beside the
 * midpoints, then random floats of all magnitudes. */
static void check_encoder(struct fmt16 f, uint16_t (*enc)(float), const char *name)
{
    size_t wrong = 0, tried = 0;

    for (uint32_t h = 0; h < 65536; h++) {
        double v = ref_decode(f, (uint16_t)h);
        double next;
        float probes[4];

        if (isnan(v) || isinf(v)) {
            continue;
        }
        next      = ref_decode(f, (uint16_t)(h + 1));
        probes[0] = (float)v;
        probes[1] = (float)v;
        probes[2] = probes[3] = (float)v;
        if (!isnan(next) && (h & 0x7fff) != 0x7fff && fabs(next) > fabs(v)) {
            double mid = (v + next) / 2; /* exact in float: both have few mantissa bits */

            probes[1] = (float)mid;
            probes[2] = nextafterf((float)mid, 0.0f);
            probes[3] = nextafterf((float)mid, (float)(2 * mid));
        }
        for (int p = 0; p < 4; p++) {
            uint16_t want = ref_encode(f, probes[p]);
            uint16_t got  = enc(probes[p]);

            tried++;
            if (got != want && wrong++ < 4) {
                cr_log_error("%s(%a): got %#06x want %#06x", name, (double)probes[p], got, want);
            }
        }
    }
    for (int i = 0; i < 2000000; i++) {
        uint32_t u = (uint32_t)rnd();
        float x;
        uint16_t want, got;

        memcpy(&x, &u, 4);
        want = ref_encode(f, x);
        got  = enc(x);
        tried++;
        if (isnan(x) ? !lowp_is_nan(f, got) || (got & 0x8000) != (want & 0x8000) : got != want) {
            if (wrong++ < 4) {
                cr_log_error("%s(%a): got %#06x want %#06x", name, (double)x, got, want);
            }
        }
    }
    cr_expect_eq(wrong, 0, "%s: %zu of %zu conversions wrong", name, wrong, tried);
}

Test(kernels, float_to_half_rounds_nearest_even, .timeout = 60)
{
    check_encoder(HALF, fx_float_to_half, "fx_float_to_half");
}

Test(kernels, float_to_bf16_rounds_nearest_even, .timeout = 60)
{
    check_encoder(BF16, fx_float_to_bf16, "fx_float_to_bf16");
}

/* fp16 sums rounded once from fp32: exact results, ties to even, overflow at the boundary. */
Test(kernels, half_sum_rounds_once_to_nearest_even, .timeout = 10)
{
    /* 1 + 2^-10, 1 + 2^-11 (tie: stays 1), 65504 + 8, 65504 + 16 (tie: the even neighbour is
     * 65536, which overflows), subnormal + subnormal */
    uint16_t a[5]    = {0x3c00, 0x3c00, 0x7bff, 0x7bff, 0x0001};
    uint16_t b[5]    = {0x1400, 0x1000, 0x4800, 0x4c00, 0x0001};
    uint16_t want[5] = {0x3c01, 0x3c00, 0x7bff, 0x7c00, 0x0002};
    uint16_t d[5];

    fx_coll_reduce(d, a, b, 5, FX_FLOAT16, FX_SUM);
    for (int i = 0; i < 5; i++) {
        cr_expect_eq(d[i], want[i], "%#06x + %#06x = %#06x, want %#06x", a[i], b[i], d[i], want[i]);
    }
}

Test(kernels, avg_scale_divides_every_type, .timeout = 10)
{
    int32_t i32[4]  = {7, -7, 9, INT32_MIN};
    uint8_t u8[3]   = {255, 3, 0};
    float f32[3]    = {3.0f, -0.0f, 1.0f};
    uint16_t f16[2] = {0x4200 /* 3 */, 0x8000 /* -0 */};

    fx_coll_avg_scale(i32, 4, FX_INT32, 2);
    cr_expect(i32[0] == 3 && i32[1] == -3 && i32[2] == 4 && i32[3] == INT32_MIN / 2,
              "int32 avg scale: %d %d %d %d", i32[0], i32[1], i32[2], i32[3]);
    fx_coll_avg_scale(u8, 3, FX_UINT8, 4);
    cr_expect(u8[0] == 63 && u8[1] == 0 && u8[2] == 0, "uint8: %u %u %u", u8[0], u8[1], u8[2]);
    fx_coll_avg_scale(f32, 3, FX_FLOAT32, 2);
    cr_expect(f32[0] == 1.5f && f32[1] == 0.0f && signbit(f32[1]) && f32[2] == 0.5f,
              "float: %a %a %a", (double)f32[0], (double)f32[1], (double)f32[2]);
    fx_coll_avg_scale(f16, 2, FX_FLOAT16, 2);
    cr_expect(f16[0] == 0x3e00 && f16[1] == 0x8000, "half: %#06x %#06x", f16[0], f16[1]);
    fx_coll_avg_scale(f32, 3, FX_FLOAT32, 1);
    cr_expect(f32[0] == 1.5f, "nranks 1 leaves the data alone");
}

Test(kernels, invalid_datatype_or_op_has_no_kernel, .timeout = 10)
{
    cr_expect_null(fx_coll_reduce_fn((fx_datatype)FX_NUM_DATATYPES, FX_SUM));
    cr_expect_null(fx_coll_reduce_fn(FX_FLOAT32, (fx_op)FX_NUM_OPS));
    cr_expect_null(fx_coll_reduce_fn((fx_datatype)-1, FX_SUM));
    cr_expect_not_null(fx_coll_reduce_fn(FX_FLOAT32, FX_AVG));
    cr_expect_eq(fx_coll_reduce_fn(FX_FLOAT32, FX_AVG), fx_coll_reduce_fn(FX_FLOAT32, FX_SUM));
}

Test(kernels, rounding_mode_is_round_to_nearest, .timeout = 10)
{
    /* The reference relies on nearbyint rounding to nearest-even. */
    cr_assert_eq(fegetround(), FE_TONEAREST);
    cr_assert_eq(nearbyint(2.5), 2.0);
    cr_assert_eq(nearbyint(3.5), 4.0);
}

/* ------------------------------------------------------------------ fp8 conversions */

static const struct {
    struct fmt8 f;
    float (*dec)(uint8_t);
    uint8_t (*enc)(float);
    const char *name;
} fp8s[2] = {{{3, 7, false}, fx_e4m3_to_float, fx_float_to_e4m3, "e4m3"},
             {{2, 15, true}, fx_e5m2_to_float, fx_float_to_e5m2, "e5m2"}};

/* Decoding is exact for all 256 codes and encoding the decoded value gives the code back (NaNs:
 * some NaN of the same sign). */
Test(kernels, fp8_all_256_codes_decode_exactly_and_round_trip, .timeout = 10)
{
    for (int t = 0; t < 2; t++) {
        size_t wrong = 0;

        for (unsigned c = 0; c < 256; c++) {
            double want = ref_decode8(fp8s[t].f, (uint8_t)c);
            float got   = fp8s[t].dec((uint8_t)c);
            uint8_t back;

            if (isnan(want) ? !isnan(got)
                            : ((double)got != want || !signbit(got) != !signbit(want))) {
                if (wrong++ < 4) {
                    cr_log_error("%s %#04x decodes to %a, want %a", fp8s[t].name, c, (double)got,
                                 want);
                }
            }
            back = fp8s[t].enc(got);
            if (isnan(want) ? !fp8_is_nan(fp8s[t].f, back) || (back & 0x80) != (c & 0x80)
                            : back != c) {
                if (wrong++ < 4) {
                    cr_log_error("%s %#04x round-trips to %#04x", fp8s[t].name, c, back);
                }
            }
        }
        cr_expect_eq(wrong, 0, "%s: %zu of 256 codes wrong", fp8s[t].name, wrong);
    }
}

/* Each value, the midpoint to its upper neighbour (ties to even), the floats on either side of
 * the midpoint, then random fp32 bit patterns of every magnitude. */
static size_t check_encoder8(int t, size_t *tried)
{
    struct fmt8 f = fp8s[t].f;
    size_t wrong  = 0;

    for (unsigned c = 0; c < 256; c++) {
        double v = ref_decode8(f, (uint8_t)c);
        double next;
        float probes[4];

        if (isnan(v) || isinf(v) || (c & 0x7f) == 0x7f) {
            continue;
        }
        next      = ref_decode8(f, (uint8_t)(c + 1));
        probes[0] = probes[1] = probes[2] = probes[3] = (float)v;
        if (!isnan(next) && fabs(next) > fabs(v)) {
            double mid = isinf(next) ? 61440.0 * (v < 0 ? -1 : 1) : (v + next) / 2;

            probes[1] = (float)mid;
            probes[2] = nextafterf((float)mid, 0.0f);
            probes[3] = nextafterf((float)mid, (float)(2 * mid));
        }
        for (int p = 0; p < 4; p++) {
            uint8_t want = ref_encode8(f, probes[p]);
            uint8_t got  = fp8s[t].enc(probes[p]);

            (*tried)++;
            if (got != want && wrong++ < 4) {
                cr_log_error("%s(%a): got %#04x want %#04x", fp8s[t].name, (double)probes[p], got,
                             want);
            }
        }
    }
    for (int i = 0; i < 1000000; i++) {
        uint32_t u = (uint32_t)rnd();
        float x;
        uint8_t want, got;

        memcpy(&x, &u, 4);
        want = ref_encode8(f, x);
        got  = fp8s[t].enc(x);
        (*tried)++;
        if (isnan(x) ? !fp8_is_nan(f, got) || (got & 0x80) != (want & 0x80) : got != want) {
            if (wrong++ < 4) {
                cr_log_error("%s(%a): got %#04x want %#04x", fp8s[t].name, (double)x, got, want);
            }
        }
    }
    return wrong;
}

Test(kernels, float_to_fp8_rounds_nearest_even_at_every_midpoint, .timeout = 60)
{
    for (int t = 0; t < 2; t++) {
        size_t tried = 0;
        size_t wrong = check_encoder8(t, &tried);

        cr_expect_eq(wrong, 0, "%s: %zu of %zu conversions wrong", fp8s[t].name, wrong, tried);
    }
}

Test(kernels, e4m3_saturates_to_448_and_keeps_nan, .timeout = 10)
{
    static const float in[]     = {448.0f,  463.9f,    464.0f,   480.0f,  1e6f,       INFINITY,
                                   -500.0f, -INFINITY, 0x1p-10f, 0x1p-9f, 0x1.8p-10f, 0x1.7p-7f};
    static const uint8_t want[] = {0x7e, 0x7e, 0x7e, 0x7e, 0x7e, 0x7e,
                                   0xfe, 0xfe, 0x00, 0x01, 0x01, 0x06};

    for (size_t i = 0; i < sizeof(in) / sizeof(in[0]); i++) {
        cr_expect_eq(fx_float_to_e4m3(in[i]), want[i], "e4m3(%a) = %#04x, want %#04x",
                     (double)in[i], fx_float_to_e4m3(in[i]), want[i]);
    }
    cr_expect_eq(fx_float_to_e4m3(NAN), 0x7f);
    cr_expect_eq(fx_float_to_e4m3(-NAN), 0xff);
    cr_expect(isnan(fx_e4m3_to_float(0x7f)) && isnan(fx_e4m3_to_float(0xff)));
    cr_expect_eq(fx_e4m3_to_float(0x7e), 448.0f);
    cr_expect_eq(fx_e4m3_to_float(0x01), 0x1p-9f, "smallest subnormal 2^-9");
}

Test(kernels, e5m2_overflows_to_infinity_and_keeps_nan, .timeout = 10)
{
    static const float in[]     = {57344.0f, 61439.0f, 61440.0f,   INFINITY, -INFINITY,
                                   -1e9f,    0x1p-17f, 0x1.8p-17f, 0x1p-16f, 0x1.ffp-15f};
    static const uint8_t want[] = {0x7b, 0x7b, 0x7c, 0x7c, 0xfc, 0xfc, 0x00, 0x01, 0x01, 0x04};

    for (size_t i = 0; i < sizeof(in) / sizeof(in[0]); i++) {
        cr_expect_eq(fx_float_to_e5m2(in[i]), want[i], "e5m2(%a) = %#04x, want %#04x",
                     (double)in[i], fx_float_to_e5m2(in[i]), want[i]);
    }
    cr_expect(fp8_is_nan(E5M2, fx_float_to_e5m2(NAN)));
    cr_expect(isinf(fx_e5m2_to_float(0x7c)) && fx_e5m2_to_float(0xfc) < 0);
    cr_expect(isnan(fx_e5m2_to_float(0x7d)) && isnan(fx_e5m2_to_float(0xff)));
}

/* Results rounded once: e4m3 sums saturate, e5m2 sums overflow, subnormal sums stay exact. */
Test(kernels, fp8_sum_rounds_once_and_saturates, .timeout = 10)
{
    /* e4m3: 448 + 448 saturates; 1 + 1/16 is a tie (stays 1); 1 + 3/32 rounds up; 2^-9 + 2^-9. */
    uint8_t a4[4] = {0x7e, 0x38, 0x38, 0x01}, b4[4] = {0x7e, 0x18, 0x1b, 0x01};
    uint8_t w4[4] = {0x7e, 0x38, 0x39, 0x02}, d[4];
    /* e5m2: 57344 + 57344 overflows; 1 + 1/8 is a tie (stays 1); -inf + 1. */
    uint8_t a5[3] = {0x7b, 0x3c, 0xfc}, b5[3] = {0x7b, 0x30, 0x3c}, w5[3] = {0x7c, 0x3c, 0xfc};

    fx_coll_reduce(d, a4, b4, 4, FX_FLOAT8_E4M3, FX_SUM);
    for (int i = 0; i < 4; i++) {
        cr_expect_eq(d[i], w4[i], "e4m3 %#04x + %#04x = %#04x, want %#04x", a4[i], b4[i], d[i],
                     w4[i]);
    }
    fx_coll_reduce(d, a5, b5, 3, FX_FLOAT8_E5M2, FX_SUM);
    for (int i = 0; i < 3; i++) {
        cr_expect_eq(d[i], w5[i], "e5m2 %#04x + %#04x = %#04x, want %#04x", a5[i], b5[i], d[i],
                     w5[i]);
    }
}
