/* Datatype and operator names (nccl-tests spellings), sizes, and fp16/bf16/fp8 conversions. */
#include <math.h>
#include <string.h>

#include "coll_kernels.h"
#include "coll_kernels_fp8_inl.h"

static const struct {
    const char *name;
    size_t size;
} dtypes[FX_NUM_DATATYPES] = {
    [FX_INT8] = {"int8", 1},          [FX_UINT8] = {"uint8", 1},
    [FX_INT32] = {"int32", 4},        [FX_UINT32] = {"uint32", 4},
    [FX_INT64] = {"int64", 8},        [FX_UINT64] = {"uint64", 8},
    [FX_FLOAT16] = {"half", 2},       [FX_BFLOAT16] = {"bfloat16", 2},
    [FX_FLOAT32] = {"float", 4},      [FX_FLOAT64] = {"double", 8},
    [FX_FLOAT8_E4M3] = {"f8e4m3", 1}, [FX_FLOAT8_E5M2] = {"f8e5m2", 1},
};

static const char *const op_names[FX_NUM_OPS] = {"sum", "prod", "min", "max", "avg"};

FX_API const char *fx_datatype_name(fx_datatype dtype)
{
    return (unsigned)dtype < FX_NUM_DATATYPES ? dtypes[dtype].name : NULL;
}

FX_API size_t fx_datatype_size(fx_datatype dtype)
{
    return (unsigned)dtype < FX_NUM_DATATYPES ? dtypes[dtype].size : 0;
}

FX_API const char *fx_op_name(fx_op op)
{
    return (unsigned)op < FX_NUM_OPS ? op_names[op] : NULL;
}

static uint32_t float_bits(float f)
{
    uint32_t u;

    memcpy(&u, &f, sizeof(u));
    return u;
}

static float bits_float(uint32_t u)
{
    float f;

    memcpy(&f, &u, sizeof(f));
    return f;
}

float fx_half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp  = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;

    if (exp == 0) {
        /* Zero or subnormal: mant * 2^-24, exact in fp32. */
        float v = (float)mant * 5.9604644775390625e-8f;

        return sign ? -v : v;
    }
    if (exp == 31) {
        /* Infinity, or NaN made quiet with its payload kept (as F16C does). */
        return bits_float(sign | 0x7f800000u | (mant ? 0x400000u | (mant << 13) : 0));
    }
    return bits_float(sign | ((exp + 112) << 23) | (mant << 13));
}

uint16_t fx_float_to_half(float f)
{
    uint32_t x    = float_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax   = x & 0x7fffffffu;
    uint32_t h;
    uint32_t rem;

    if (ax > 0x7f800000u) {
        return (uint16_t)(sign | 0x7e00u | ((ax & 0x7fffffu) >> 13));
    }
    if (ax >= 0x477ff000u) {
        return (uint16_t)(sign | 0x7c00u); /* >= 65520 rounds to infinity */
    }
    if (ax < 0x38800000u) {
        /* Subnormal half: units of 2^-24, rounded to nearest even (exact scaling). */
        return (uint16_t)(sign | (uint16_t)rintf(bits_float(ax) * 16777216.0f));
    }
    h   = ((ax >> 23) - 112) << 10 | (ax & 0x7fffffu) >> 13;
    rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) {
        h++;
    }
    return (uint16_t)(sign | h);
}

float fx_bf16_to_float(uint16_t b)
{
    return bits_float((uint32_t)b << 16);
}

uint16_t fx_float_to_bf16(float f)
{
    uint32_t x = float_bits(f);

    if ((x & 0x7fffffffu) > 0x7f800000u) {
        return (uint16_t)((x >> 16) | 0x40u);
    }
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

float fx_e4m3_to_float(uint8_t v)
{
    return fx_fp8_e4m3_decode(v);
}

uint8_t fx_float_to_e4m3(float f)
{
    return fx_fp8_e4m3_encode(f);
}

float fx_e5m2_to_float(uint8_t v)
{
    return fx_fp8_e5m2_decode(v);
}

uint8_t fx_float_to_e5m2(float f)
{
    return fx_fp8_e5m2_encode(f);
}
