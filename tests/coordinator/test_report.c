/* tests/coordinator/test_report.c — percentiles, result lines (parsed back
 * with cJSON), the summary json, the exit status (coordinator/report.h). */
#include <cjson/cJSON.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "coordinator/report.h"
#include "test_util.h"

static void test_percentile_interpolates_like_numpy(void **state)
{
    (void)state;
    const double v[] = {4, 1, 3, 2}; /* unsorted on purpose */
    assert_float_equal(mr_percentile(v, 4, 50), 2.5, 1e-12);
    assert_float_equal(mr_percentile(v, 4, 0), 1.0, 1e-12);
    assert_float_equal(mr_percentile(v, 4, 100), 4.0, 1e-12);
    assert_float_equal(mr_percentile(v, 4, 90), 3.7, 1e-12); /* numpy.percentile → 3.7 */
    assert_float_equal(v[0], 4.0, 0);                        /* input untouched */
    double many[100];
    for (int i = 0; i < 100; i++) many[i] = 100 - i; /* 1..100 */
    assert_float_equal(mr_percentile(many, 100, 99), 99.01, 1e-9);
    assert_float_equal(mr_percentile(many, 100, 50), 50.5, 1e-9);
    const double one[] = {7};
    assert_float_equal(mr_percentile(one, 1, 99), 7.0, 0);
    assert_float_equal(mr_percentile(NULL, 0, 50), 0.0, 0);
}

typedef struct fixture {
    mr_config cfg;
    mr_req_set set;
    mr_tracker t;
    mr_run_report rep;
} fixture;

/* Lines: "q\"1" (completed, 3 tokens), bad (invalid), "r" (error after 1 token). */
static int setup(void **state)
{
    static fixture f;
    memset(&f, 0, sizeof f);
    f.cfg = tiny_config();
    const char *text = "{\"id\":\"q\\\"1\",\"prompt_ids\":[1,2],\"max_new_tokens\":3}\n"
                       "{\"id\":\"bad\",\"prompt_ids\":[999],\"max_new_tokens\":3}\n"
                       "{\"id\":\"r\",\"prompt_ids\":[4,5,6,7],\"max_new_tokens\":3}\n";
    if (mr_requests_parse_text(text, strlen(text), &f.cfg, &f.set) != MR_OK) return -1;
    if (mr_tracker_init(&f.t, &f.set, NULL, 100.0) != MR_OK) return -1;
    mr_tracker_submitted(&f.t, 0, 1, 2, 1, 100.0);
    mr_tracker_on_token(&f.t, 2, "q\"1", 10, 0, "", 100.100);
    mr_tracker_on_token(&f.t, 2, "q\"1", 11, 0, "", 100.120);
    mr_tracker_on_token(&f.t, 2, "q\"1", 12, 1, "", 100.140);
    mr_tracker_submitted(&f.t, 2, 1, 2, 1, 100.0);
    mr_tracker_on_token(&f.t, 2, "r", 77, 0, "", 100.2);
    mr_tracker_rank_dead(&f.t, 2, true, false, 100.5);
    /* ranks: 0 coordinator, 1 prefill, 2 decode (dead), 3 expert */
    if (mr_run_report_init(&f.rep, 4) != MR_OK) return -1;
    const char *roles[] = {"coordinator", "prefill", "decode", "expert"};
    for (int i = 0; i < 4; i++) snprintf(f.rep.ranks[i].role, sizeof f.rep.ranks[i].role, "%s", roles[i]);
    f.rep.ranks[2].alive = false;
    const uint64_t bytes1[] = {100, 0, 5000, 0}, msgs1[] = {2, 0, 3, 0};
    mr_run_report_set(&f.rep, 1, "prefill", 1.5, 1.0, 0.25, 0.125, 6, 1, bytes1, 4, msgs1, 4);
    const uint64_t bytes3[] = {64, 0, 0}, msgs3[] = {1, 0, 0}; /* shorter than n_ranks */
    mr_run_report_set(&f.rep, 3, "expert", 0.5, 0.25, 0.0, 0.25, 40, 0, bytes3, 3, msgs3, 3);
    const uint64_t bytes0[] = {0, 300, 200, 0}, msgs0[] = {0, 3, 2, 0};
    mr_run_report_set(&f.rep, 0, "coordinator", 0.1, 0, 0, 0.4, 0, 2, bytes0, 4, msgs0, 4);
    f.rep.wall_s = 0.5;
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    mr_run_report_free(&f->rep);
    mr_tracker_free(&f->t);
    mr_req_set_free(&f->set);
    return 0;
}

static cJSON *parse_line(const mr_rq_state *r)
{
    char *line = mr_report_result_line(r);
    assert_non_null(line);
    assert_null(strchr(line, '\n'));
    cJSON *o = cJSON_Parse(line);
    free(line);
    assert_non_null(o);
    return o;
}

static double num(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v)) fail_msg("'%s' is not a number", key);
    return v->valuedouble;
}

static const char *str(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsString(v)) fail_msg("'%s' is not a string", key);
    return v->valuestring;
}

static void test_completed_result_line_round_trips(void **state)
{
    fixture *f = *state;
    cJSON *o = parse_line(&f->t.reqs[0]);
    assert_string_equal(str(o, "id"), "q\"1");
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(o, "output_ids");
    assert_int_equal(cJSON_GetArraySize(ids), 3);
    assert_int_equal(cJSON_GetArrayItem(ids, 0)->valueint, 10);
    assert_int_equal(cJSON_GetArrayItem(ids, 2)->valueint, 12);
    assert_string_equal(str(o, "finish_reason"), "stop");
    assert_string_equal(str(o, "error"), "");
    assert_float_equal(num(o, "prompt_tokens"), 2, 0);
    assert_float_equal(num(o, "ttft_ms"), 100.0, 1e-3);
    assert_float_equal(num(o, "tpot_ms"), 20.0, 1e-3);
    assert_float_equal(num(o, "e2e_ms"), 140.0, 1e-3);
    assert_string_equal(o->child->string, "id"); /* id first, for people reading it */
    cJSON_Delete(o);
}

static void test_error_result_lines_carry_the_message(void **state)
{
    fixture *f = *state;
    cJSON *o = parse_line(&f->t.reqs[1]);
    assert_string_equal(str(o, "id"), "bad");
    assert_string_equal(str(o, "finish_reason"), "error");
    assert_string_equal(str(o, "error"), "line 2: prompt_ids[0] = 999 is >= vocab_size 256");
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(o, "output_ids")), 0);
    assert_float_equal(num(o, "ttft_ms"), 0, 0);
    cJSON_Delete(o);
    o = parse_line(&f->t.reqs[2]);
    assert_string_equal(str(o, "error"), "lost decode rank 2");
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(o, "output_ids")), 1);
    assert_float_equal(num(o, "e2e_ms"), 500.0, 1e-3);
    cJSON_Delete(o);
}

static void test_results_file_has_one_line_per_input_line_in_order(void **state)
{
    fixture *f = *state;
    char *buf = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&buf, &len);
    assert_int_equal(mr_report_write_results(&f->t, fp), MR_OK);
    fclose(fp);
    const char *want_ids[] = {"q\"1", "bad", "r"};
    char *save = NULL;
    int n = 0;
    for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save), n++) {
        cJSON *o = cJSON_Parse(line);
        assert_non_null(o);
        assert_string_equal(str(o, "id"), want_ids[n]);
        cJSON_Delete(o);
    }
    assert_int_equal(n, 3);
    free(buf);
}

static void test_summary_counts_percentiles_roles_links_and_deaths(void **state)
{
    fixture *f = *state;
    char *text = mr_report_summary_json(&f->t, &f->rep);
    assert_non_null(text);
    cJSON *s = cJSON_Parse(text);
    free(text);
    assert_non_null(s);
    assert_float_equal(num(s, "requests"), 3, 0);
    assert_float_equal(num(s, "completed"), 1, 0);
    assert_float_equal(num(s, "failed"), 2, 0);
    assert_float_equal(num(s, "output_tokens"), 4, 0);
    assert_float_equal(num(s, "prompt_tokens"), 6, 0); /* valid requests only */
    assert_float_equal(num(s, "output_tok_s"), 8.0, 1e-9);
    const cJSON *ttft = cJSON_GetObjectItemCaseSensitive(s, "ttft_ms");
    assert_float_equal(num(ttft, "p50"), 100.0, 1e-3); /* completed requests only */
    assert_float_equal(num(ttft, "n"), 1, 0);
    const cJSON *roles = cJSON_GetObjectItemCaseSensitive(s, "roles");
    const cJSON *prefill = cJSON_GetObjectItemCaseSensitive(roles, "prefill");
    assert_float_equal(num(prefill, "compute_s"), 1.0, 1e-9);
    assert_float_equal(num(prefill, "transfer_s"), 0.25, 1e-9);
    const cJSON *decode = cJSON_GetObjectItemCaseSensitive(roles, "decode");
    assert_float_equal(num(decode, "reported"), 0, 0);
    /* links: 0→1, 0→2, 1→0, 1→2, 3→0 */
    const cJSON *links = cJSON_GetObjectItemCaseSensitive(s, "links");
    assert_int_equal(cJSON_GetArraySize(links), 5);
    bool found = false;
    const cJSON *l;
    cJSON_ArrayForEach(l, links) {
        if (num(l, "src") == 1 && num(l, "dst") == 2) {
            assert_float_equal(num(l, "bytes"), 5000, 0);
            assert_float_equal(num(l, "msgs"), 3, 0);
            found = true;
        }
    }
    assert_true(found);
    assert_float_equal(num(s, "frames_rejected"), 3, 0); /* 1 (prefill) + 2 (coordinator) */
    const cJSON *dead = cJSON_GetObjectItemCaseSensitive(s, "dead_ranks");
    assert_int_equal(cJSON_GetArraySize(dead), 1);
    assert_int_equal(cJSON_GetArrayItem(dead, 0)->valueint, 2);
    cJSON_Delete(s);
}

static void test_exit_status_names_failures_and_dead_ranks(void **state)
{
    fixture *f = *state;
    char reason[256];
    assert_int_equal(mr_report_exit_status(&f->t, &f->rep, reason, sizeof reason), 1);
    assert_string_equal(reason, "2 of 3 requests failed; dead ranks: 2 (decode)");

    char path[] = "/tmp/moerun-test-status-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(mr_report_write_status(path, 1, reason), MR_OK);
    char buf[512] = {0};
    FILE *fp = fopen(path, "r");
    size_t n = fread(buf, 1, sizeof buf - 1, fp);
    fclose(fp);
    assert_true(n > 0);
    assert_string_equal(buf, "1\n2 of 3 requests failed; dead ranks: 2 (decode)\n");
    assert_int_equal(mr_report_write_status(path, 0, ""), MR_OK);
    fp = fopen(path, "r");
    memset(buf, 0, sizeof buf);
    n = fread(buf, 1, sizeof buf - 1, fp);
    fclose(fp);
    assert_string_equal(buf, "0\n");
    remove(path);
}

static void test_exit_status_zero_only_when_all_completed_and_none_died(void **state)
{
    (void)state;
    mr_config cfg = tiny_config();
    mr_req_set set;
    const char *text = "{\"id\":\"x\",\"prompt_ids\":[1],\"max_new_tokens\":1}\n";
    assert_int_equal(mr_requests_parse_text(text, strlen(text), &cfg, &set), MR_OK);
    mr_tracker t;
    assert_int_equal(mr_tracker_init(&t, &set, NULL, 0.0), MR_OK);
    mr_tracker_submitted(&t, 0, 1, 2, 1, 0.0);
    mr_tracker_on_token(&t, 2, "x", 3, 2, "", 0.1);
    mr_run_report rep;
    assert_int_equal(mr_run_report_init(&rep, 3), MR_OK);
    char reason[128];
    assert_int_equal(mr_report_exit_status(&t, &rep, reason, sizeof reason), 0);
    assert_string_equal(reason, "");
    rep.ranks[1].alive = false;
    snprintf(rep.ranks[1].role, sizeof rep.ranks[1].role, "prefill");
    assert_int_equal(mr_report_exit_status(&t, &rep, reason, sizeof reason), 1);
    assert_string_equal(reason, "dead ranks: 1 (prefill)");
    /* the stderr table mentions the dead rank too */
    char *buf = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&buf, &len);
    mr_report_print_table(&t, &rep, fp);
    fclose(fp);
    assert_non_null(strstr(buf, "1 requests, 1 completed, 0 failed"));
    assert_non_null(strstr(buf, "dead ranks: 1 (prefill)"));
    free(buf);
    mr_run_report_free(&rep);
    mr_tracker_free(&t);
    mr_req_set_free(&set);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_percentile_interpolates_like_numpy),
        cmocka_unit_test_setup_teardown(test_completed_result_line_round_trips, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_result_lines_carry_the_message, setup, teardown),
        cmocka_unit_test_setup_teardown(test_results_file_has_one_line_per_input_line_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_summary_counts_percentiles_roles_links_and_deaths, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exit_status_names_failures_and_dead_ranks, setup, teardown),
        cmocka_unit_test(test_exit_status_zero_only_when_all_completed_and_none_died),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
