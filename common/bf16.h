/* common/bf16.h — bfloat16 <-> fp32, the one definition every part uses
 * (checkpoint loading, weight storage on a backend, the CPU kernels'
 * emulation of BF16 GEMM inputs).
 *
 * bfloat16 is the top 16 bits of an fp32. Widening is exact; narrowing
 * rounds to nearest, ties to even, and keeps NaN a (quiet) NaN. Bit patterns
 * move through memcpy, never through casts.
 */
#ifndef MR_BF16_H
#define MR_BF16_H

#include <stdint.h>
#include <string.h>

static inline float mr_bf16_widen(uint16_t bits)
{
    const uint32_t u = (uint32_t)bits << 16;
    float value;
    memcpy(&value, &u, sizeof value);
    return value;
}

static inline uint16_t mr_bf16_round(float value)
{
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u) /* NaN: keep it a quiet NaN */
        return (uint16_t)((bits >> 16) | 0x0040u);
    bits += 0x7FFFu + ((bits >> 16) & 1u);   /* round to nearest even */
    return (uint16_t)(bits >> 16);
}

/* value rounded to the nearest bfloat16, as an fp32 */
static inline float mr_bf16_quantize(float value)
{
    return mr_bf16_widen(mr_bf16_round(value));
}

#endif
