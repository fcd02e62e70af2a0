/*
 * OCP 8-bit float conversions as branch-free integer and fp32 operations, shared by the scalar
 * conversions (coll_dtype.c) and every kernel set, so that all of them round alike and the
 * auto-vectoriser turns the loops that call them into selects.
 *
 * e4m3: bias 7, no infinities, NaN = S.1111.111, largest finite 448; fp32 values beyond 448
 * (infinities included) saturate to +-448. e5m2: bias 15, IEEE-like (+-inf, NaNs).
 * Encoding rounds to nearest-even, subnormals included; it relies on the default rounding mode.
 */
#ifndef FX_COLL_KERNELS_FP8_INL_H
#define FX_COLL_KERNELS_FP8_INL_H

#include <stdint.h>
#include <string.h>

static inline uint32_t fx_fp8_f2u(float f)
{
    uint32_t u;

    memcpy(&u, &f, sizeof(u));
    return u;
}

static inline float fx_fp8_u2f(uint32_t u)
{
    float f;

    memcpy(&f, &u, sizeof(f));
    return f;
}

/* The magnitude bits placed at the top of an fp32 mantissa with the exponent rebiased; a
 * subnormal code (exponent field 0) rebiased one higher reads as 2^emin * (1 + m) and
 * subtracting 2^emin leaves 2^emin * m exactly. No fp32 subnormal is touched, so no microcode
 * assist slows the loops. */
static inline float fx_fp8_e4m3_decode(uint8_t v)
{
    uint32_t mag  = (uint32_t)(v & 0x7fu);
    uint32_t sign = (uint32_t)(v & 0x80u) << 24;
    float f       = fx_fp8_u2f((mag << 20) + (120u << 23));
    float s       = fx_fp8_u2f((mag << 20) + (121u << 23)) - 0x1p-6f;
    uint32_t bits = fx_fp8_f2u(mag < 8u ? s : f);

    bits = mag == 0x7fu ? 0x7fc00000u : bits;
    return fx_fp8_u2f(bits | sign);
}

static inline float fx_fp8_e5m2_decode(uint8_t v)
{
    uint32_t mag  = (uint32_t)(v & 0x7fu);
    uint32_t sign = (uint32_t)(v & 0x80u) << 24;
    float f       = fx_fp8_u2f((mag << 21) + (112u << 23));
    float s       = fx_fp8_u2f((mag << 21) + (113u << 23)) - 0x1p-14f;
    uint32_t bits = fx_fp8_f2u(mag < 4u ? s : f);
    uint32_t spec = 0x7f800000u | (mag & 3u) << 21 | (mag > 0x7cu ? 0x400000u : 0);

    bits = mag >= 0x7cu ? spec : bits;
    return fx_fp8_u2f(bits | sign);
}

/*
 * Normals: add half an output ulp (minus one unless the kept lsb is odd) and shift, then rebias;
 * a carry out of the mantissa moves to the next exponent as it should. Subnormals: adding
 * 2^(mbits_shift) makes the fp32 adder round |x| to a multiple of the subnormal step, and the
 * low bits of the sum are the code.
 */
static inline uint8_t fx_fp8_e4m3_encode(float f)
{
    uint32_t x    = fx_fp8_f2u(f);
    uint32_t ax   = x & 0x7fffffffu;
    uint32_t sign = (x >> 24) & 0x80u;
    uint32_t norm = ((ax + 0x7ffffu + ((ax >> 20) & 1u)) >> 20) - (120u << 3);
    uint32_t sub  = fx_fp8_f2u(fx_fp8_u2f(ax) + 0x1p14f) - 0x46800000u;
    uint32_t v    = ax < 0x3c800000u ? sub : norm; /* below 2^-6: subnormal */

    v = ax > 0x43e00000u ? 0x7eu : v; /* above 448: saturate */
    v = ax > 0x7f800000u ? 0x7fu : v; /* NaN */
    return (uint8_t)(sign | v);
}

static inline uint8_t fx_fp8_e5m2_encode(float f)
{
    uint32_t x    = fx_fp8_f2u(f);
    uint32_t ax   = x & 0x7fffffffu;
    uint32_t sign = (x >> 24) & 0x80u;
    uint32_t norm = ((ax + 0xfffffu + ((ax >> 21) & 1u)) >> 21) - (112u << 2);
    uint32_t sub  = fx_fp8_f2u(fx_fp8_u2f(ax) + 0x1p7f) - 0x43000000u;
    uint32_t v    = ax < 0x38800000u ? sub : norm; /* below 2^-14: subnormal */

    v = ax >= 0x47700000u ? 0x7cu : v; /* 61440 and above round to infinity */
    v = ax > 0x7f800000u ? 0x7eu : v;  /* NaN */
    return (uint8_t)(sign | v);
}

#endif /* FX_COLL_KERNELS_FP8_INL_H */
