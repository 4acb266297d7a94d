/* tests/model/test_fp_convert.c — exact dtype conversions (model/safetensors.h):
 * every BF16/F16/F8_E4M3 code against an independent formula, and fp32 → code
 * rounding (nearest even, saturation, NaN). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "model/safetensors.h"

static uint32_t bits_of(float value)
{
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    return bits;
}

static float float_of(uint32_t bits)
{
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

/* E4M3FN by the definition: sign, 4-bit exponent (bias 7), 3-bit mantissa. */
static double fp8_formula(int code)
{
    double sign = (code & 0x80) ? -1.0 : 1.0;
    int e = (code >> 3) & 0xF, m = code & 7;
    if (e == 0)
        return sign * (m / 8.0) * pow(2.0, -6);
    return sign * (1.0 + m / 8.0) * pow(2.0, e - 7);
}

static void test_fp8_all_256_codes_match_the_formula(void **state)
{
    (void)state;
    for (int code = 0; code < 256; code++) {
        float got = mr_fp8_e4m3_to_f32((uint8_t)code);
        if ((code & 0x7F) == 0x7F) {
            assert_true(isnan(got));
            continue;
        }
        if ((double)got != fp8_formula(code))
            fail_msg("code 0x%02X: got %.9g want %.9g", code, (double)got, fp8_formula(code));
    }
    assert_true(mr_fp8_e4m3_to_f32(0x7E) == 448.0f);
    assert_true(mr_fp8_e4m3_to_f32(0x01) == 0x1p-9f); /* smallest subnormal */
    assert_true(mr_fp8_e4m3_to_f32(0x08) == 0x1p-6f); /* smallest normal */
}

static void test_fp8_encode_round_trips_every_finite_code(void **state)
{
    (void)state;
    for (int code = 0; code < 256; code++) {
        if ((code & 0x7F) == 0x7F)
            continue;
        uint8_t back = mr_f32_to_fp8_e4m3(mr_fp8_e4m3_to_f32((uint8_t)code));
        int want = code == 0x80 ? 0x00 : code; /* -0 encodes as 0 */
        if (back != want)
            fail_msg("code 0x%02X re-encoded as 0x%02X", code, back);
    }
}

static void test_fp8_encode_rounds_to_nearest_even_and_saturates(void **state)
{
    (void)state;
    /* Between consecutive codes: below the midpoint → lower, above → upper,
     * at the midpoint → the even code. */
    for (int code = 0; code < 0x7E; code++) {
        float lo = mr_fp8_e4m3_to_f32((uint8_t)code), hi = mr_fp8_e4m3_to_f32((uint8_t)(code + 1));
        float mid = (lo + hi) / 2; /* exact in fp32 */
        int even = code % 2 == 0 ? code : code + 1;
        assert_int_equal(mr_f32_to_fp8_e4m3(mid), even);
        assert_int_equal(mr_f32_to_fp8_e4m3(nextafterf(mid, 0)), code);
        assert_int_equal(mr_f32_to_fp8_e4m3(nextafterf(mid, INFINITY)), code + 1);
        assert_int_equal(mr_f32_to_fp8_e4m3(-nextafterf(mid, INFINITY)), 0x80 | (code + 1));
    }
    assert_int_equal(mr_f32_to_fp8_e4m3(448.0f), 0x7E);
    assert_int_equal(mr_f32_to_fp8_e4m3(470.0f), 0x7E);
    assert_int_equal(mr_f32_to_fp8_e4m3(1e30f), 0x7E);
    assert_int_equal(mr_f32_to_fp8_e4m3(INFINITY), 0x7E);
    assert_int_equal(mr_f32_to_fp8_e4m3(-INFINITY), 0xFE);
    assert_int_equal(mr_f32_to_fp8_e4m3(NAN), 0x7F);
    assert_int_equal(mr_f32_to_fp8_e4m3(-0.0f), 0x00);
    assert_int_equal(mr_f32_to_fp8_e4m3(0x1p-11f), 0x00); /* below half the smallest subnormal */
    assert_int_equal(mr_f32_to_fp8_e4m3(1e-30f), 0x00);
}

static void test_bf16_is_the_top_16_bits_of_f32(void **state)
{
    (void)state;
    for (uint32_t code = 0; code < 65536; code++) {
        float got = mr_bf16_to_f32((uint16_t)code);
        uint32_t want_bits = code << 16;
        if (bits_of(got) != want_bits)
            fail_msg("bf16 0x%04X -> 0x%08X", code, bits_of(got));
        /* every non-NaN bf16 value converts back to itself */
        if (!isnan(got))
            assert_int_equal(mr_f32_to_bf16(got), code);
    }
}

static void test_bf16_encode_rounds_to_nearest_even(void **state)
{
    (void)state;
    assert_int_equal(mr_f32_to_bf16(float_of(0x3F808000u)), 0x3F80); /* tie → even (down) */
    assert_int_equal(mr_f32_to_bf16(float_of(0x3F818000u)), 0x3F82); /* tie → even (up) */
    assert_int_equal(mr_f32_to_bf16(float_of(0x3F808001u)), 0x3F81); /* above tie */
    assert_int_equal(mr_f32_to_bf16(float_of(0x3F807FFFu)), 0x3F80); /* below tie */
    assert_int_equal(mr_f32_to_bf16(float_of(0x7F7FFFFFu)), 0x7F80); /* FLT_MAX → inf */
    uint16_t nan_bits = mr_f32_to_bf16(float_of(0x7F800001u));      /* signalling NaN */
    assert_true(isnan(mr_bf16_to_f32(nan_bits)));
}

static double f16_formula(int code)
{
    double sign = (code & 0x8000) ? -1.0 : 1.0;
    int e = (code >> 10) & 0x1F, m = code & 0x3FF;
    if (e == 0)
        return sign * (m / 1024.0) * pow(2.0, -14);
    return sign * (1.0 + m / 1024.0) * pow(2.0, e - 15);
}

static void test_f16_all_codes_including_subnormals_inf_nan(void **state)
{
    (void)state;
    for (int code = 0; code < 65536; code++) {
        float got = mr_f16_to_f32((uint16_t)code);
        int e = (code >> 10) & 0x1F, m = code & 0x3FF;
        if (e == 0x1F) {
            if (m == 0)
                assert_true(isinf(got) && (signbit(got) != 0) == ((code & 0x8000) != 0));
            else
                assert_true(isnan(got));
            continue;
        }
        if ((double)got != f16_formula(code) || (signbit(got) != 0) != ((code & 0x8000) != 0))
            fail_msg("f16 0x%04X: got %.9g want %.9g", code, (double)got, f16_formula(code));
    }
    assert_true(mr_f16_to_f32(0x0001) == 0x1p-24f); /* smallest subnormal */
    assert_true(mr_f16_to_f32(0x7BFF) == 65504.0f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fp8_all_256_codes_match_the_formula),
        cmocka_unit_test(test_fp8_encode_round_trips_every_finite_code),
        cmocka_unit_test(test_fp8_encode_rounds_to_nearest_even_and_saturates),
        cmocka_unit_test(test_bf16_is_the_top_16_bits_of_f32),
        cmocka_unit_test(test_bf16_encode_rounds_to_nearest_even),
        cmocka_unit_test(test_f16_all_codes_including_subnormals_inf_nan),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
