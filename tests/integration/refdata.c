/*
 * Reference data for the integration tests; see refdata.h for the choice of values.
 */
#include "refdata.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

struct dt_desc {
    const char *name;
    size_t size;
    int is_float;
    int is_signed;
};

static const struct dt_desc dt_descs[FX_NUM_DATATYPES] = {
    [FX_INT8] = {"int8", 1, 0, 1},          [FX_UINT8] = {"uint8", 1, 0, 0},
    [FX_INT32] = {"int32", 4, 0, 1},        [FX_UINT32] = {"uint32", 4, 0, 0},
    [FX_INT64] = {"int64", 8, 0, 1},        [FX_UINT64] = {"uint64", 8, 0, 0},
    [FX_FLOAT16] = {"float16", 2, 1, 1},    [FX_BFLOAT16] = {"bfloat16", 2, 1, 1},
    [FX_FLOAT32] = {"float32", 4, 1, 1},    [FX_FLOAT64] = {"float64", 8, 1, 1},
    [FX_FLOAT8_E4M3] = {"f8e4m3", 1, 1, 1}, [FX_FLOAT8_E5M2] = {"f8e5m2", 1, 1, 1},
};

static const char *const op_names[FX_NUM_OPS] = {"sum", "prod", "min", "max", "avg"};

size_t ref_dt_size(fx_datatype dt)
{
    return dt_descs[dt].size;
}

const char *ref_dt_name(fx_datatype dt)
{
    return dt_descs[dt].name;
}

const char *ref_op_name(fx_op op)
{
    return op_names[op];
}

static uint32_t f32_bits(float f)
{
    uint32_t x;

    memcpy(&x, &f, sizeof(x));
    return x;
}

/* m >> shift, rounded to nearest, ties to even; 1 <= shift <= 31. */
static uint32_t rne_shift(uint32_t m, int shift)
{
    uint32_t q    = m >> shift;
    uint32_t rem  = m & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);

    if (rem > half || (rem == half && (q & 1) != 0)) {
        q++;
    }
    return q;
}

uint16_t ref_f32_to_f16(float f)
{
    uint32_t x    = f32_bits(f);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t e;

    x &= 0x7fffffff;
    if (x > 0x7f800000) {
        return (uint16_t)(sign | 0x7e00 | ((x >> 13) & 0x3ff));
    }
    if (x >= 0x477ff000) { /* 65520 and above round to infinity */
        return (uint16_t)(sign | 0x7c00);
    }
    if (x >= 0x38800000) { /* normal in binary16: rebias the exponent, round the mantissa */
        return (uint16_t)(sign | rne_shift(x - 0x38000000, 13));
    }
    e = x >> 23;
    if (e < 102) { /* below 2^-25: rounds to zero */
        return (uint16_t)sign;
    }
    return (uint16_t)(sign | rne_shift((x & 0x7fffff) | 0x800000, 126 - (int)e));
}

uint16_t ref_f32_to_bf16(float f)
{
    uint32_t x = f32_bits(f);

    if ((x & 0x7fffffff) > 0x7f800000) {
        return (uint16_t)((x >> 16) | 0x40);
    }
    return (uint16_t)((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

/* Rounds |f| in double with nearbyint (nearest-even) to mbits mantissa bits and the exponent
 * bias; the code is clamped to maxcode (e4m3: 448 saturates, e5m2: infinity). */
static uint8_t ref_f32_to_fp8(float f, int mbits, int bias, unsigned maxcode, unsigned nancode)
{
    unsigned sign = signbit(f) ? 0x80u : 0;
    double a      = fabs((double)f);
    unsigned code;
    double r;
    int k;

    if (isnan(f)) {
        return (uint8_t)(sign | nancode);
    }
    if (isinf(f)) {
        return (uint8_t)(sign | maxcode);
    }
    frexp(a, &k);
    if (a == 0 || k - 1 < 1 - bias) {
        /* Subnormal or zero; a result of 1 << mbits is the smallest normal's code. */
        r = nearbyint(ldexp(a, bias - 1 + mbits));
        return (uint8_t)(sign | (unsigned)r);
    }
    k -= 1;
    r = nearbyint(ldexp(a, mbits - k));
    if (r == ldexp(1.0, mbits + 1)) {
        k++;
        r = ldexp(1.0, mbits);
    }
    if (k + bias > 31) {
        return (uint8_t)(sign | maxcode);
    }
    code = (unsigned)(k + bias) << mbits | ((unsigned)r & ((1u << mbits) - 1));
    return (uint8_t)(sign | (code > maxcode ? maxcode : code));
}

uint8_t ref_f32_to_e4m3(float f)
{
    return ref_f32_to_fp8(f, 3, 7, 0x7e, 0x7f);
}

uint8_t ref_f32_to_e5m2(float f)
{
    return ref_f32_to_fp8(f, 2, 15, 0x7c, 0x7e);
}

double ref_f16_to_double(uint16_t h)
{
    int e      = (h >> 10) & 0x1f;
    int m      = h & 0x3ff;
    double mag = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(m + 1024, e - 25);

    return (h & 0x8000) ? -mag : mag;
}

uint64_t ref_mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

uint64_t ref_bits(uint64_t seed, int rank, size_t i)
{
    return ref_mix(seed ^ ((uint64_t)(rank + 1) * 0xd1b54a32d192ed03ULL) ^ (uint64_t)i);
}

/* The integer a rank contributes: any value, mostly odd for PROD so products keep low bits. */
static uint64_t int_value(fx_op op, uint64_t b)
{
    return op == FX_PROD && b % 7 != 0 ? b | 1 : b;
}

static int is_fp8(fx_datatype dt)
{
    return dt == FX_FLOAT8_E4M3 || dt == FX_FLOAT8_E5M2;
}

/* The floating-point value a rank contributes: small, so every reduction is exact (fp8 SUM
 * contributions are -1, 0 or 1: partial sums of up to 8 ranks are exact even in e5m2). */
static double flt_value(fx_datatype dt, fx_op op, uint64_t b)
{
    static const double prod_values[4] = {1.0, -1.0, 2.0, 0.5};

    switch (op) {
    case FX_PROD:
        return prod_values[b & 3];
    case FX_MIN:
    case FX_MAX:
        return (double)((int)(b % 241) - 120);
    default:
        return is_fp8(dt) ? (double)((int)(b % 3) - 1) : ((int)(b % 9) - 4) * 0.5;
    }
}

/* Stores the low bytes of v as element i (little-endian). */
static void store_raw(fx_datatype dt, void *buf, size_t i, uint64_t v)
{
    memcpy((char *)buf + i * dt_descs[dt].size, &v, dt_descs[dt].size);
}

/* Stores element i: the low bytes of v for integers, fv converted for floating point. */
static void store(fx_datatype dt, void *buf, size_t i, uint64_t v, double fv)
{
    char *p = (char *)buf + i * dt_descs[dt].size;
    uint16_t h;
    float f;

    switch (dt) {
    case FX_FLOAT8_E4M3:
        *p = (char)ref_f32_to_e4m3((float)fv);
        break;
    case FX_FLOAT8_E5M2:
        *p = (char)ref_f32_to_e5m2((float)fv);
        break;
    case FX_FLOAT16:
        h = ref_f32_to_f16((float)fv);
        memcpy(p, &h, sizeof(h));
        break;
    case FX_BFLOAT16:
        h = ref_f32_to_bf16((float)fv);
        memcpy(p, &h, sizeof(h));
        break;
    case FX_FLOAT32:
        f = (float)fv;
        memcpy(p, &f, sizeof(f));
        break;
    case FX_FLOAT64:
        memcpy(p, &fv, sizeof(fv));
        break;
    default:
        store_raw(dt, buf, i, v);
        break;
    }
}

void ref_fill(const struct ref_case *k, int rank, void *buf)
{
    int is_float = dt_descs[k->dt].is_float;

    for (size_t i = 0; i < k->count; i++) {
        uint64_t b = ref_bits(k->seed, rank, i);

        if (is_float) {
            store(k->dt, buf, i, 0, flt_value(k->dt, k->op, b));
        } else {
            store(k->dt, buf, i, int_value(k->op, b), 0.0);
        }
    }
}

/* v truncated to the type's width and extended by its signedness. */
static uint64_t int_extend(fx_datatype dt, uint64_t v)
{
    unsigned bits = (unsigned)dt_descs[dt].size * 8;
    uint64_t mask = bits == 64 ? ~0ULL : (1ULL << bits) - 1;

    v &= mask;
    if (dt_descs[dt].is_signed && bits < 64 && (v >> (bits - 1)) != 0) {
        v |= ~mask;
    }
    return v;
}

static uint64_t int_combine(fx_datatype dt, fx_op op, uint64_t a, uint64_t b)
{
    int lt = dt_descs[dt].is_signed ? (int64_t)a < (int64_t)b : a < b;

    switch (op) {
    case FX_PROD:
        return a * b;
    case FX_MIN:
        return lt ? a : b;
    case FX_MAX:
        return lt ? b : a;
    default:
        return a + b;
    }
}

static uint64_t int_finish(fx_datatype dt, fx_op op, uint64_t acc, int nranks)
{
    uint64_t s = int_extend(dt, acc);

    if (op != FX_AVG) {
        return s;
    }
    if (dt_descs[dt].is_signed) {
        return (uint64_t)((int64_t)s / nranks);
    }
    return s / (uint64_t)nranks;
}

static double flt_combine(fx_op op, double a, double b)
{
    switch (op) {
    case FX_PROD:
        return a * b;
    case FX_MIN:
        return a < b ? a : b;
    case FX_MAX:
        return a > b ? a : b;
    default:
        return a + b;
    }
}

static double flt_finish(fx_datatype dt, fx_op op, double acc, int nranks)
{
    if (op != FX_AVG) {
        return acc;
    }
    if (dt == FX_FLOAT64) {
        return acc / nranks;
    }
    return (double)((float)acc / (float)nranks);
}

static void expect_int(const struct ref_case *k, void *out, uint64_t *acc)
{
    for (int r = 0; r < k->nranks; r++) {
        for (size_t i = 0; i < k->count; i++) {
            uint64_t v = int_extend(k->dt, int_value(k->op, ref_bits(k->seed, r, i)));

            acc[i] = r == 0 ? v : int_combine(k->dt, k->op, acc[i], v);
        }
    }
    for (size_t i = 0; i < k->count; i++) {
        store(k->dt, out, i, int_finish(k->dt, k->op, acc[i], k->nranks), 0.0);
    }
}

static void expect_flt(const struct ref_case *k, void *out, double *acc)
{
    for (int r = 0; r < k->nranks; r++) {
        for (size_t i = 0; i < k->count; i++) {
            double v = flt_value(k->dt, k->op, ref_bits(k->seed, r, i));

            acc[i] = r == 0 ? v : flt_combine(k->op, acc[i], v);
        }
    }
    for (size_t i = 0; i < k->count; i++) {
        store(k->dt, out, i, 0, flt_finish(k->dt, k->op, acc[i], k->nranks));
    }
}

void ref_expect(const struct ref_case *k, void *out, void *scratch)
{
    if (dt_descs[k->dt].is_float) {
        expect_flt(k, out, scratch);
    } else {
        expect_int(k, out, scratch);
    }
}

static uint64_t load_bits(fx_datatype dt, const void *buf, size_t i)
{
    uint64_t v = 0;

    memcpy(&v, (const char *)buf + i * dt_descs[dt].size, dt_descs[dt].size);
    return v;
}

static void describe(const struct ref_case *k, size_t i, uint64_t got, uint64_t want, char *first,
                     size_t len)
{
    snprintf(first, len, "first at [%zu]: got 0x%0*" PRIx64 " want 0x%0*" PRIx64, i,
             (int)dt_descs[k->dt].size * 2, got, (int)dt_descs[k->dt].size * 2, want);
}

size_t ref_compare(const struct ref_case *k, const void *got, const void *want, char *first,
                   size_t len)
{
    size_t size  = dt_descs[k->dt].size;
    size_t wrong = 0;

    if (k->count == 0 || memcmp(got, want, k->count * size) == 0) {
        return 0;
    }
    for (size_t i = 0; i < k->count; i++) {
        uint64_t g = load_bits(k->dt, got, i);
        uint64_t w = load_bits(k->dt, want, i);

        if (g != w && wrong++ == 0) {
            describe(k, i, g, w, first, len);
        }
    }
    return wrong;
}

int ref_nan_at(const struct ref_case *k, int rank, size_t i)
{
    if (i % 11 == 5) {
        return 1;
    }
    return i % 3 == 0 && (int)((i / 3) % (size_t)k->nranks) == rank;
}

static void set_nan(fx_datatype dt, void *buf, size_t i, int negative)
{
    double nan = negative ? -NAN : NAN;

    store(dt, buf, i, 0, nan);
}

void ref_inject_nan(const struct ref_case *k, int rank, void *buf)
{
    for (size_t i = 0; i < k->count; i++) {
        if (ref_nan_at(k, rank, i)) {
            set_nan(k->dt, buf, i, (i & 1) != 0);
        }
    }
}

static int is_nan(fx_datatype dt, uint64_t v)
{
    switch (dt) {
    case FX_FLOAT8_E4M3:
        return (v & 0x7f) == 0x7f;
    case FX_FLOAT8_E5M2:
        return (v & 0x7f) > 0x7c;
    case FX_FLOAT16:
        return (v & 0x7c00) == 0x7c00 && (v & 0x3ff) != 0;
    case FX_BFLOAT16:
        return (v & 0x7f80) == 0x7f80 && (v & 0x7f) != 0;
    case FX_FLOAT32:
        return (v & 0x7f800000) == 0x7f800000 && (v & 0x7fffff) != 0;
    default:
        return (v & 0x7ff0000000000000ULL) == 0x7ff0000000000000ULL &&
               (v & 0xfffffffffffffULL) != 0;
    }
}

static int any_nan_at(const struct ref_case *k, size_t i)
{
    for (int r = 0; r < k->nranks; r++) {
        if (ref_nan_at(k, r, i)) {
            return 1;
        }
    }
    return 0;
}

size_t ref_compare_nan(const struct ref_case *k, const void *got, const void *want, char *first,
                       size_t len)
{
    size_t wrong = 0;

    for (size_t i = 0; i < k->count; i++) {
        uint64_t g = load_bits(k->dt, got, i);
        uint64_t w = load_bits(k->dt, want, i);
        int ok     = any_nan_at(k, i) ? is_nan(k->dt, g) : g == w;

        if (!ok && wrong++ == 0) {
            describe(k, i, g, any_nan_at(k, i) ? 0x7fffffffffffffffULL : w, first, len);
        }
    }
    return wrong;
}

void ref_fill_gather(const struct ref_case *k, int rank, void *buf)
{
    for (size_t i = 0; i < k->count; i++) {
        store_raw(k->dt, buf, i, ref_bits(k->seed, rank, i));
    }
}

/* Allgather moves raw bits: store them as integers of the same width whatever the type. */
size_t ref_check_gather(const struct ref_case *k, const void *recv, char *first, size_t len)
{
    size_t size   = dt_descs[k->dt].size;
    uint64_t mask = size == 8 ? ~0ULL : (1ULL << (size * 8)) - 1;
    size_t wrong  = 0;

    for (int r = 0; r < k->nranks; r++) {
        for (size_t i = 0; i < k->count; i++) {
            size_t at  = (size_t)r * k->count + i;
            uint64_t g = load_bits(k->dt, recv, at);
            uint64_t w = ref_bits(k->seed, r, i) & mask;

            if (g != w && wrong++ == 0) {
                describe(k, at, g, w, first, len);
            }
        }
    }
    return wrong;
}
