/* tests/coordinator/test_requests.c — jsonl request parsing and validation
 * (coordinator/requests.h): every bad line ends with a message naming the line
 * and the problem, and the other lines still parse. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "coordinator/requests.h"
#include "test_util.h"

static mr_config cfg;

static int setup(void **state)
{
    (void)state;
    cfg = tiny_config();
    return 0;
}

/* Parse `line` as line 7 and expect an error containing `needle`. */
static void expect_bad(const char *line, const char *needle)
{
    mr_req_spec r;
    mr_status st = mr_requests_parse_line(line, strlen(line), 7, &cfg, &r);
    if (st == MR_OK) fail_msg("'%s' was accepted", line);
    assert_int_equal(st, MR_EINVAL);
    assert_non_null(r.error);
    if (strncmp(r.error, "line 7: ", 8) != 0) fail_msg("error '%s' does not name line 7", r.error);
    if (!strstr(r.error, needle)) fail_msg("error '%s' does not mention '%s'", r.error, needle);
    assert_string_equal(mr_last_error(), r.error);
    free(r.id);
    free(r.prompt_ids);
    free(r.error);
}

static void test_full_line_parses_every_field(void **state)
{
    (void)state;
    const char *line = "{\"id\":\"a\",\"prompt_ids\":[1,17,255],\"max_new_tokens\":5,"
                       "\"temperature\":0.7,\"top_p\":0.9,\"top_k\":40,\"seed\":12345,"
                       "\"ignore_eos\":true,\"arrival_ms\":250.5,\"extra\":{\"x\":1}}";
    mr_req_spec r;
    assert_int_equal(mr_requests_parse_line(line, strlen(line), 1, &cfg, &r), MR_OK);
    assert_null(r.error);
    assert_string_equal(r.id, "a");
    assert_int_equal(r.n_prompt, 3);
    assert_int_equal(r.prompt_ids[0], 1);
    assert_int_equal(r.prompt_ids[1], 17);
    assert_int_equal(r.prompt_ids[2], 255);
    assert_int_equal(r.max_new_tokens, 5);
    assert_float_equal(r.sampling.temperature, 0.7f, 1e-6);
    assert_float_equal(r.sampling.top_p, 0.9f, 1e-6);
    assert_int_equal(r.sampling.top_k, 40);
    assert_true(r.sampling.seed == 12345u);
    assert_true(r.ignore_eos);
    assert_float_equal(r.arrival_ms, 250.5, 1e-9);
    free(r.id);
    free(r.prompt_ids);
}

static void test_optional_fields_default_like_generate(void **state)
{
    (void)state;
    const char *line = "{\"id\":\"b\",\"prompt_ids\":[3],\"max_new_tokens\":1}";
    mr_req_spec r;
    assert_int_equal(mr_requests_parse_line(line, strlen(line), 1, &cfg, &r), MR_OK);
    assert_float_equal(r.sampling.temperature, 0.0f, 0);
    assert_float_equal(r.sampling.top_p, 1.0f, 0);
    assert_int_equal(r.sampling.top_k, 0);
    assert_true(r.sampling.seed == 0);
    assert_false(r.ignore_eos);
    assert_true(r.arrival_ms < 0);
    free(r.id);
    free(r.prompt_ids);
}

static void test_seed_as_string_keeps_all_64_bits(void **state)
{
    (void)state;
    const char *line =
        "{\"id\":\"s\",\"prompt_ids\":[3],\"max_new_tokens\":1,\"seed\":\"18446744073709551615\"}";
    mr_req_spec r;
    assert_int_equal(mr_requests_parse_line(line, strlen(line), 1, &cfg, &r), MR_OK);
    assert_true(r.sampling.seed == UINT64_MAX);
    free(r.id);
    free(r.prompt_ids);
}

static void test_max_new_tokens_capped_by_positions(void **state)
{
    (void)state;
    /* 250-token prompt: positions up to 255 → at most 256 - 250 + 1 = 7 new tokens */
    char line[4096];
    int n = snprintf(line, sizeof line, "{\"id\":\"c\",\"max_new_tokens\":100,\"prompt_ids\":[");
    for (int i = 0; i < 250; i++) n += snprintf(line + n, sizeof line - (size_t)n, "%s5", i ? "," : "");
    snprintf(line + n, sizeof line - (size_t)n, "]}");
    mr_req_spec r;
    assert_int_equal(mr_requests_parse_line(line, strlen(line), 1, &cfg, &r), MR_OK);
    assert_int_equal(r.n_prompt, 250);
    assert_int_equal(r.requested_new_tokens, 100);
    assert_int_equal(r.max_new_tokens, 7);
    free(r.id);
    free(r.prompt_ids);
}

static void test_each_bad_line_names_its_problem(void **state)
{
    (void)state;
    expect_bad("{\"id\":\"x\",", "unparsable JSON");
    expect_bad("[1,2,3]", "not a JSON object");
    expect_bad("{\"prompt_ids\":[1],\"max_new_tokens\":1}", "missing \"id\"");
    expect_bad("{\"id\":\"\",\"prompt_ids\":[1],\"max_new_tokens\":1}", "\"id\" is empty");
    expect_bad("{\"id\":7,\"prompt_ids\":[1],\"max_new_tokens\":1}", "\"id\" must be a string");
    expect_bad("{\"id\":\"x\",\"max_new_tokens\":1}", "missing \"prompt_ids\"");
    expect_bad("{\"id\":\"x\",\"prompt_ids\":[],\"max_new_tokens\":1}", "\"prompt_ids\" is empty");
    expect_bad("{\"id\":\"x\",\"prompt_ids\":\"1,2\",\"max_new_tokens\":1}", "must be an array");
    expect_bad("{\"id\":\"x\",\"prompt_ids\":[1,\"a\"],\"max_new_tokens\":1}",
               "prompt_ids[1] is not an integer");
    expect_bad("{\"id\":\"x\",\"prompt_ids\":[1,2.5],\"max_new_tokens\":1}",
               "prompt_ids[1] is not an integer");
    expect_bad("{\"id\":\"x\",\"prompt_ids\":[-3],\"max_new_tokens\":1}", "is negative");
    expect_bad("{\"id\":\"x\",\"prompt_ids\":[1,2,256],\"max_new_tokens\":1}",
               "prompt_ids[2] = 256 is >= vocab_size 256");
    expect_bad("{\"id\":\"x\",\"prompt_ids\":[1]}", "missing \"max_new_tokens\"");
    expect_bad("{\"id\":\"x\",\"prompt_ids\":[1],\"max_new_tokens\":0}", "\"max_new_tokens\" must be >= 1");
    expect_bad("{\"id\":\"x\",\"prompt_ids\":[1],\"max_new_tokens\":-2}", "\"max_new_tokens\" must be >= 1");
    expect_bad("{\"id\":\"x\",\"prompt_ids\":[1],\"max_new_tokens\":\"3\"}", "must be an integer");
    expect_bad("{\"id\":\"x\",\"prompt_ids\":[1],\"max_new_tokens\":2,\"temperature\":-1}",
               "temperature");
    expect_bad("{\"id\":\"x\",\"prompt_ids\":[1],\"max_new_tokens\":2,\"top_p\":0}", "top_p");
    expect_bad("{\"id\":\"x\",\"prompt_ids\":[1],\"max_new_tokens\":2,\"top_p\":1.5}", "top_p");
    expect_bad("{\"id\":\"x\",\"prompt_ids\":[1],\"max_new_tokens\":2,\"top_k\":-1}", "top_k");
    expect_bad("{\"id\":\"x\",\"prompt_ids\":[1],\"max_new_tokens\":2,\"top_k\":1.5}", "top_k");
    expect_bad("{\"id\":\"x\",\"prompt_ids\":[1],\"max_new_tokens\":2,\"seed\":-1}", "seed");
    expect_bad("{\"id\":\"x\",\"prompt_ids\":[1],\"max_new_tokens\":2,\"seed\":\"12x\"}", "seed");
    expect_bad("{\"id\":\"x\",\"prompt_ids\":[1],\"max_new_tokens\":2,\"temperature\":\"hot\"}",
               "\"temperature\" must be a number");
    expect_bad("{\"id\":\"x\",\"prompt_ids\":[1],\"max_new_tokens\":2,\"ignore_eos\":1}",
               "ignore_eos");
    expect_bad("{\"id\":\"x\",\"prompt_ids\":[1],\"max_new_tokens\":2,\"arrival_ms\":-5}",
               "arrival_ms");
}

static void test_prompt_longer_than_positions_is_rejected(void **state)
{
    (void)state;
    char line[8192];
    int n = snprintf(line, sizeof line, "{\"id\":\"long\",\"max_new_tokens\":1,\"prompt_ids\":[");
    for (int i = 0; i < 257; i++) n += snprintf(line + n, sizeof line - (size_t)n, "%s9", i ? "," : "");
    snprintf(line + n, sizeof line - (size_t)n, "]}");
    expect_bad(line, "prompt of 257 tokens is longer than max_position_embeddings 256");
}

static void test_text_keeps_input_order_skips_blanks_and_flags_duplicates(void **state)
{
    (void)state;
    const char *text =
        "{\"id\":\"a\",\"prompt_ids\":[1],\"max_new_tokens\":2}\n"   /* 1 */
        "\n"                                                          /* 2 blank */
        "{\"id\":\"b\",\"prompt_ids\":[1,2],\"max_new_tokens\":2}\n" /* 3 */
        "   \t\r\n"                                                   /* 4 blank */
        "not json\n"                                                  /* 5 */
        "{\"id\":\"b\",\"prompt_ids\":[3],\"max_new_tokens\":2}\n"   /* 6 duplicate */
        "{\"id\":\"c\",\"prompt_ids\":[300],\"max_new_tokens\":2}\n" /* 7 bad token */
        "{\"id\":\"c\",\"prompt_ids\":[4],\"max_new_tokens\":2}";    /* 8 dup of a bad line */
    mr_req_set set;
    assert_int_equal(mr_requests_parse_text(text, strlen(text), &cfg, &set), MR_OK);
    assert_int_equal(set.n, 6);
    assert_int_equal(set.n_invalid, 4);
    assert_string_equal(set.items[0].id, "a");
    assert_int_equal(set.items[0].line, 1);
    assert_null(set.items[0].error);
    assert_string_equal(set.items[1].id, "b");
    assert_int_equal(set.items[1].line, 3);
    assert_null(set.items[1].error);
    assert_int_equal(set.items[2].line, 5);
    assert_string_equal(set.items[2].id, "");
    assert_string_equal(set.items[2].error, "line 5: unparsable JSON");
    assert_string_equal(set.items[3].error, "line 6: duplicate id 'b' (first on line 3)");
    assert_string_equal(set.items[3].id, "b");
    assert_non_null(strstr(set.items[4].error, "line 7: prompt_ids[0] = 300"));
    assert_string_equal(set.items[5].error, "line 8: duplicate id 'c' (first on line 7)");
    mr_req_set_free(&set);
}

static void test_many_ids_are_checked_for_duplicates(void **state)
{
    (void)state;
    /* 3000 lines (table growth), the last repeating line 1234's id */
    size_t cap = 3001 * 80, len = 0;
    char *text = malloc(cap);
    for (int i = 1; i <= 3000; i++)
        len += (size_t)snprintf(text + len, cap - len,
                                "{\"id\":\"r%d\",\"prompt_ids\":[1],\"max_new_tokens\":1}\n", i);
    len += (size_t)snprintf(text + len, cap - len,
                            "{\"id\":\"r1234\",\"prompt_ids\":[1],\"max_new_tokens\":1}\n");
    mr_req_set set;
    assert_int_equal(mr_requests_parse_text(text, len, &cfg, &set), MR_OK);
    free(text);
    assert_int_equal(set.n, 3001);
    assert_int_equal(set.n_invalid, 1);
    assert_string_equal(set.items[3000].error, "line 3001: duplicate id 'r1234' (first on line 1234)");
    mr_req_set_free(&set);
}

static void test_load_names_a_missing_file(void **state)
{
    (void)state;
    mr_req_set set;
    assert_int_equal(mr_requests_load("/nonexistent/requests.jsonl", &cfg, &set), MR_EIO);
    assert_non_null(strstr(mr_last_error(), "/nonexistent/requests.jsonl"));
}

static void test_load_reads_a_file_without_trailing_newline(void **state)
{
    (void)state;
    char path[] = "/tmp/moerun-test-requests-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *fp = fdopen(fd, "w");
    fputs("{\"id\":\"x\",\"prompt_ids\":[1],\"max_new_tokens\":3}\n"
          "{\"id\":\"y\",\"prompt_ids\":[2],\"max_new_tokens\":3}", fp);
    fclose(fp);
    mr_req_set set;
    assert_int_equal(mr_requests_load(path, &cfg, &set), MR_OK);
    remove(path);
    assert_int_equal(set.n, 2);
    assert_string_equal(set.items[1].id, "y");
    assert_int_equal(set.items[1].line, 2);
    mr_req_set_free(&set);
}

static void test_demo_set_is_valid_for_tiny(void **state)
{
    (void)state;
    mr_req_set set;
    assert_int_equal(mr_requests_demo(&cfg, &set), MR_OK);
    assert_int_equal(set.n, 8);
    assert_int_equal(set.n_invalid, 0);
    int min_len = 1 << 30, max_len = 0;
    for (int i = 0; i < set.n; i++) {
        const mr_req_spec *r = &set.items[i];
        char id[16];
        snprintf(id, sizeof id, "demo-%d", i);
        assert_string_equal(r->id, id);
        assert_null(r->error);
        assert_true(r->n_prompt >= 1 && r->n_prompt <= cfg.max_position_embeddings);
        for (int t = 0; t < r->n_prompt; t++)
            assert_true(r->prompt_ids[t] >= 0 && r->prompt_ids[t] < cfg.vocab_size);
        assert_true(r->max_new_tokens >= 1);
        mr_sampler s;
        assert_int_equal(mr_sampler_init(&s, &r->sampling), MR_OK);
        if (r->n_prompt < min_len) min_len = r->n_prompt;
        if (r->n_prompt > max_len) max_len = r->n_prompt;
    }
    assert_true(max_len >= 4 * min_len); /* varied lengths */
    mr_req_set_free(&set);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_line_parses_every_field),
        cmocka_unit_test(test_optional_fields_default_like_generate),
        cmocka_unit_test(test_seed_as_string_keeps_all_64_bits),
        cmocka_unit_test(test_max_new_tokens_capped_by_positions),
        cmocka_unit_test(test_each_bad_line_names_its_problem),
        cmocka_unit_test(test_prompt_longer_than_positions_is_rejected),
        cmocka_unit_test(test_text_keeps_input_order_skips_blanks_and_flags_duplicates),
        cmocka_unit_test(test_many_ids_are_checked_for_duplicates),
        cmocka_unit_test(test_load_names_a_missing_file),
        cmocka_unit_test(test_load_reads_a_file_without_trailing_newline),
        cmocka_unit_test(test_demo_set_is_valid_for_tiny),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
