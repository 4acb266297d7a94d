/* model/fp_convert.c — exact scalar conversions between fp32 and the storage
 * dtypes of safetensors checkpoints (BF16, F16, F8_E4M3FN). Contract in
 * safetensors.h. Bit patterns move through memcpy, never through casts.
 */
#include "safetensors.h"

#include "../common/bf16.h"

#include <math.h>
#include <string.h>

static uint32_t f32_bits(float value)
{
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    return bits;
}

static float f32_from_bits(uint32_t bits)
{
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

float mr_bf16_to_f32(uint16_t bits)
{
    return mr_bf16_widen(bits);
}

uint16_t mr_f32_to_bf16(float value)
{
    return mr_bf16_round(value);
}

float mr_f16_to_f32(uint16_t bits)
{
    uint32_t sign = (uint32_t)(bits & 0x8000u) << 16;
    uint32_t exponent = (bits >> 10) & 0x1Fu;
    uint32_t mantissa = bits & 0x3FFu;
    if (exponent == 0x1F)                                 /* inf / nan */
        return f32_from_bits(sign | 0x7F800000u | (mantissa << 13));
    if (exponent == 0) {                                  /* zero / subnormal: m * 2^-24 */
        float magnitude = ldexpf((float)mantissa, -24);
        return sign ? -magnitude : magnitude;
    }
    return f32_from_bits(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

float mr_fp8_e4m3_to_f32(uint8_t code)
{
    int exponent = (code >> 3) & 0xF;
    int mantissa = code & 0x7;
    float magnitude;
    if (exponent == 0xF && mantissa == 0x7)
        return NAN;
    if (exponent == 0)
        magnitude = ldexpf((float)mantissa, -9);          /* m/8 * 2^-6 */
    else
        magnitude = ldexpf((float)(8 + mantissa), exponent - 10); /* (1+m/8) * 2^(e-7) */
    return (code & 0x80) ? -magnitude : magnitude;
}

uint8_t mr_f32_to_fp8_e4m3(float value)
{
    uint32_t bits = f32_bits(value);
    uint32_t sign = (bits >> 24) & 0x80u;
    uint32_t abs_bits = bits & 0x7FFFFFFFu;
    uint32_t code;
    if (abs_bits > 0x7F800000u)
        return 0x7F;                                      /* NaN */
    if (abs_bits >= 0x43E00000u) {                        /* |x| >= 448: saturate */
        code = 0x7E;
    } else if (abs_bits < 0x3C800000u) {                  /* |x| < 2^-6: subnormal grid m*2^-9 */
        float scaled = f32_from_bits(abs_bits) * 512.0f;  /* exact (power of two) */
        float rounded = nearbyintf(scaled);               /* default mode: ties to even */
        code = (uint32_t)rounded;                         /* 0..8; 8 is the first normal */
    } else {
        /* Keep 3 of the 23 mantissa bits with round-to-nearest-even; a carry
         * moves into the exponent, which is exactly the next grid value. */
        uint32_t rounded = (abs_bits + 0x7FFFFu + ((abs_bits >> 20) & 1u)) >> 20;
        code = rounded - (120u << 3);                     /* rebias exponent 127 -> 7 */
        if (code > 0x7E)
            code = 0x7E;
    }
    if (code == 0)
        return 0;
    return (uint8_t)(sign | code);
}
