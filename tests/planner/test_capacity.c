/* tests/planner/test_capacity.c — the capacity planner (planner/capacity.h,
 * planner/trace.h): cost model against hand-computed values, simulation and
 * search invariants, trace readers, profiles, calibration, and a sanity band
 * against DeepSeek's published per-node figures.
 * argv[1]: the shared directory (models/deepseek-ai--DeepSeek-V3.config.json);
 * the sanity-band test skips without it. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "planner/capacity.h"
#include "planner/capacity_report.h"
#include "planner/trace.h"

static const char *shared_dir = "../shared";

#define assert_near(a, b, rel) assert_true(fabs((double)(a) - (double)(b)) <= \
                                           (rel) * fmax(fabs((double)(b)), 1e-300))

/* Small enough to compute by hand: D=4, 2 layers (1 dense, 1 MoE), 2 heads,
 * q_lora 3, kv_lora 2, nope 2, rope 1, v_head 2, 4 experts top-2 of inner 2,
 * one shared expert, dense inner 8, vocab 10. */
static mr_config tiny_config(void)
{
    mr_config c;
    memset(&c, 0, sizeof c);
    c.hidden_size = 4;
    c.intermediate_size = 8;
    c.moe_intermediate_size = 2;
    c.num_hidden_layers = 2;
    c.first_k_dense_replace = 1;
    c.num_attention_heads = 2;
    c.vocab_size = 10;
    c.n_routed_experts = 4;
    c.n_shared_experts = 1;
    c.num_experts_per_tok = 2;
    c.q_lora_rank = 3;
    c.kv_lora_rank = 2;
    c.qk_nope_head_dim = 2;
    c.qk_rope_head_dim = 1;
    c.v_head_dim = 2;
    return c;
}

/* DeepSeek-V3's shapes (the config file's numbers), fp8 128x128 blocks. */
static mr_config v3_config(void)
{
    mr_config c;
    memset(&c, 0, sizeof c);
    c.hidden_size = 7168;
    c.intermediate_size = 18432;
    c.moe_intermediate_size = 2048;
    c.num_hidden_layers = 61;
    c.first_k_dense_replace = 3;
    c.num_attention_heads = 128;
    c.vocab_size = 129280;
    c.n_routed_experts = 256;
    c.n_shared_experts = 1;
    c.num_experts_per_tok = 8;
    c.q_lora_rank = 1536;
    c.kv_lora_rank = 512;
    c.qk_nope_head_dim = 128;
    c.qk_rope_head_dim = 64;
    c.v_head_dim = 128;
    c.fp8 = true;
    c.weight_block_size[0] = c.weight_block_size[1] = 128;
    return c;
}

static mr_cap_model model_on(const mr_config *c, const char *gpu)
{
    mr_cap_model m = {.cfg = c};
    assert_int_equal(mr_cap_hw_profile(gpu, &m.hw), MR_OK);
    mr_cap_deploy_defaults(c, &m.dep);
    return m;
}

/* ---- cost model ------------------------------------------------------------ */

static void test_tiny_layer_bytes_and_flops_equal_hand_computed(void **state)
{
    (void)state;
    mr_config c = tiny_config();
    mr_cap_model m = model_on(&c, "h800");
    assert_int_equal(m.dep.weight_bytes, 2); /* the config has no quantization_config: bf16 */
    /* attention: q_a 4*3 + q_b 3*2*3 + kv_a 4*3 + kv_b 2*2*4 + o 2*2*4 = 74 */
    assert_near(mr_cap_attn_params(&c), 74, 1e-12);

    /* decode, one token with 5 positions of context, EP group of 1 GPU */
    mr_cap_batch b = {.phase = MR_CAP_DECODE, .tokens = 1, .attn_pairs = 5, .kv_rows = 5,
                      .logits_rows = 1};
    mr_cap_work w;
    mr_cap_layer_work(&m, 1, false, &b, &w);
    /* bf16 attention 74 and dense 3*4*8 weights, KV 5 rows * 3 values * 2 B */
    assert_near(w.hbm_bytes, 2 * (74 + 96) + 5 * 3 * 2, 1e-12);
    assert_near(w.gemm_flops, 2 * (74 + 96), 1e-12);
    assert_near(w.bf16_flops, 2 * 5 * (4 * 2 + 2 * 1), 1e-12); /* H*ctx*(4C + 2R) */
    assert_near(w.nvlink_bytes + w.net_bytes, 0, 1e-12);

    mr_cap_layer_work(&m, 1, true, &b, &w);
    /* router 4*4 bf16 = 32 B; shared 24 weights; experts: 4 held, each touched
     * with probability 1 - (1 - 2/4)^1 = 0.5 -> 2 * 24 weights */
    assert_near(w.hbm_bytes, 2 * 74 + 32 + 2 * 24 + 2 * 48 + 30, 1e-12);
    assert_near(w.gemm_flops, 2 * (74 + 24 + 2 * 24), 1e-12);
    assert_near(w.bf16_flops, 100 + 2 * 16, 1e-12);

    m.dep.weight_bytes = 1; /* fp8: one byte + one fp32 scale per 128x128 block */
    mr_cap_layer_work(&m, 1, false, &b, &w);
    assert_near(w.hbm_bytes, (74 + 96) * (1 + 4.0 / 16384) + 30, 1e-12);

    /* prefill: expanded attention 2*H*pairs*(nope + rope) + 2*H*pairs*v_head */
    b = (mr_cap_batch){.phase = MR_CAP_PREFILL, .tokens = 3, .attn_pairs = 6, .kv_rows = 3};
    mr_cap_layer_work(&m, 1, false, &b, &w);
    assert_near(w.bf16_flops, 2 * 2 * 6 * 3 + 2 * 2 * 6 * 2, 1e-12);
    assert_near(w.gemm_flops, 2 * 3 * (74 + 96), 1e-12);
    /* each prompt token's latent KV row (3 values, bf16) goes to a decode node */
    assert_near(w.net_bytes, 3 * 3 * 2, 1e-12);
    assert_near(w.nvlink_bytes, 0, 1e-12);
}

static void test_all_to_all_volume_per_layer_equals_hand_computed(void **state)
{
    (void)state;
    mr_config c = tiny_config();
    mr_cap_model m = model_on(&c, "h800"); /* 8 GPUs per node */
    m.dep.weight_bytes = 1;
    const double copy = 4 * (1 + 2); /* D values: fp8 dispatch + bf16 combine */
    mr_cap_batch b = {.phase = MR_CAP_DECODE, .tokens = 10, .attn_pairs = 10, .kv_rows = 10};
    mr_cap_work w;
    mr_cap_layer_work(&m, 16, true, &b, &w); /* 2 nodes */
    assert_near(w.nvlink_bytes, 10 * 2 * 7.0 / 16 * copy, 1e-12);  /* K copies, 7 of 16 GPUs */
    assert_near(w.net_bytes, 10 * 2 * 8.0 / 16 * copy, 1e-12);     /* 8 of 16 GPUs remote */
    b.phase = MR_CAP_PREFILL;
    mr_cap_layer_work(&m, 16, true, &b, &w);
    assert_near(w.nvlink_bytes, 10 * 2 * 7.0 / 8 * copy, 1e-12);
    const double kv_out = 10 * 3 * 2; /* prompt tokens' latent KV rows to decode (bf16) */
    assert_near(w.net_bytes, 10 * 1 * (1 - 0.25) * copy + kv_out, 1e-12); /* once per remote node hit */
    mr_cap_layer_work(&m, 16, false, &b, &w);
    assert_near(w.nvlink_bytes, 0, 1e-12); /* dense layers do not all-to-all */
    assert_near(w.net_bytes, kv_out, 1e-12);
}

static void test_roofline_takes_the_slowest_of_memory_math_and_links(void **state)
{
    (void)state;
    mr_config c = tiny_config();
    mr_cap_model m = {.cfg = &c};
    m.hw = (mr_cap_hw){.hbm_bytes_per_s = 100, .bf16_flops_per_s = 10, .fp8_flops_per_s = 20,
                       .nvlink_bytes_per_s = 50, .net_bytes_per_s = 5, .gpus_per_node = 8};
    mr_cap_deploy_defaults(&c, &m.dep);
    m.dep.weight_bytes = 1;
    m.dep.efficiency = 0.5;
    m.dep.link_efficiency = 0.25;
    mr_cap_work w = {.hbm_bytes = 100, .gemm_flops = 20, .bf16_flops = 10};
    assert_near(mr_cap_work_s(&m, &w), 4.0, 1e-12); /* math (1 + 1) / 0.5 > memory 1 / 0.5 */
    w.hbm_bytes = 300;
    assert_near(mr_cap_work_s(&m, &w), 6.0, 1e-12); /* memory 3 / 0.5 */
    w.net_bytes = 10;
    assert_near(mr_cap_work_s(&m, &w), 8.0, 1e-12); /* network 10 / (5 * 0.25) */
    m.dep.weight_bytes = 2;                         /* bf16 GEMMs run at the bf16 peak */
    w = (mr_cap_work){.gemm_flops = 20};
    assert_near(mr_cap_work_s(&m, &w), 4.0, 1e-12);
}

static void test_weights_per_gpu_equal_hand_computed(void **state)
{
    (void)state;
    mr_config c = tiny_config();
    mr_cap_model m = model_on(&c, "h800");
    m.dep.weight_bytes = 2;
    /* dense (74 + 96) * 2 + MoE (74 * 2 + router 32 + shared 48 + 2 held experts * 48)
     * + bf16 embedding and lm_head 2 * 2 * 10 * 4 */
    assert_near(mr_cap_weight_bytes_per_gpu(&m, 2), 340 + 324 + 160, 1e-12);
    assert_near(mr_cap_kv_bytes_per_token(&m), 2 * 3 * 2, 1e-12);
}

static void test_decode_step_grows_with_batch_and_context(void **state)
{
    (void)state;
    mr_config c = v3_config();
    mr_cap_model m = model_on(&c, "h800");
    double prev = 0;
    for (int b = 1; b <= 256; b *= 2) {
        double step = mr_cap_decode_step_s(&m, 144, b, 2048);
        assert_true(step > prev);
        assert_true(mr_cap_decode_step_s(&m, 144, b, 8192) > step);
        prev = step;
    }
    /* more sequences per step is more tokens per second, never fewer */
    assert_true(256 / mr_cap_decode_step_s(&m, 144, 256, 2048) >
                64 / mr_cap_decode_step_s(&m, 144, 64, 2048));
}

static void test_kv_memory_bounds_the_decode_batch(void **state)
{
    (void)state;
    mr_config c = v3_config();
    mr_cap_model m = model_on(&c, "h800");
    /* EP8 on one H800 node: ~101 GB of fp8 weights per GPU do not fit in 72 GB */
    assert_true(mr_cap_kv_batch_limit(&m, 8, 1000) == 0);
    double free_bytes = 0.9 * 80e9 - mr_cap_weight_bytes_per_gpu(&m, 16);
    double kv_seq = 61 * 576 * 2 * 4000.0;
    assert_true(mr_cap_kv_batch_limit(&m, 16, 4000) == floor(free_bytes / kv_seq));
    assert_true(mr_cap_kv_batch_limit(&m, 16, 8000) < mr_cap_kv_batch_limit(&m, 16, 4000));
    int nodes = 0;
    assert_int_equal(mr_cap_min_ep_nodes(&m, &nodes), MR_OK);
    assert_int_equal(nodes, 2);
    m.hw.hbm_bytes = 141e9; /* H200-sized memory: one node holds it */
    assert_int_equal(mr_cap_min_ep_nodes(&m, &nodes), MR_OK);
    assert_int_equal(nodes, 1);
}

/* ---- simulation and search ------------------------------------------------- */

static void test_des_ttft_of_a_lone_request_is_its_service_time(void **state)
{
    (void)state;
    mr_config c = v3_config();
    mr_cap_model m = model_on(&c, "h800");
    mr_cap_request r = {.arrival_s = 5.0, .input_tokens = 1000, .output_tokens = 10};
    mr_cap_batch b = {.phase = MR_CAP_PREFILL, .tokens = 1000, .attn_pairs = 1000 * 1001 / 2.0,
                      .kv_rows = 1000, .logits_rows = 1};
    const double service_ms = 1e3 * mr_cap_forward_s(&m, 16, &b);
    mr_cap_prefill_row row;
    assert_int_equal(mr_cap_prefill_simulate(&m, 2, &r, 1, 1.0, 2, 1e9, &row), MR_OK);
    assert_near(row.ttft_p50_ms, service_ms, 1e-9);
    assert_near(row.ttft_p99_ms, service_ms, 1e-9);
    assert_true(row.meets);
}

static void test_des_second_request_waits_for_the_only_gpu(void **state)
{
    (void)state;
    mr_config c = tiny_config();
    mr_cap_model m = model_on(&c, "h800");
    m.hw.gpus_per_node = 1;
    mr_cap_request r[2] = {{0.0, 100, 1}, {0.0, 300, 1}};
    mr_cap_batch b1 = {.phase = MR_CAP_PREFILL, .tokens = 100, .attn_pairs = 100 * 101 / 2.0,
                       .kv_rows = 100, .logits_rows = 1};
    mr_cap_batch b2 = {.phase = MR_CAP_PREFILL, .tokens = 300, .attn_pairs = 300 * 301 / 2.0,
                       .kv_rows = 300, .logits_rows = 1};
    const double s1 = 1e3 * mr_cap_forward_s(&m, 1, &b1), s2 = 1e3 * mr_cap_forward_s(&m, 1, &b2);
    mr_cap_prefill_row row;
    assert_int_equal(mr_cap_prefill_simulate(&m, 1, r, 2, 1.0, 1, 1e9, &row), MR_OK);
    assert_near(row.ttft_p50_ms, s1, 1e-9);      /* the first starts alone at once */
    assert_near(row.ttft_p99_ms, s1 + s2, 1e-9); /* the second queues behind it */
    assert_near(row.utilization, 1.0, 1e-9);
}

static void test_des_splits_a_long_prompt_into_chunks(void **state)
{
    (void)state;
    mr_config c = tiny_config();
    mr_cap_model m = model_on(&c, "h800");
    m.hw.gpus_per_node = 1;
    m.dep.prefill_chunk_tokens = 100;
    mr_cap_request r = {0.0, 250, 1};
    double want = 0;
    const double cuts[4] = {0, 100, 200, 250};
    for (int i = 0; i < 3; i++) {
        double p0 = cuts[i], p1 = cuts[i + 1];
        mr_cap_batch b = {.phase = MR_CAP_PREFILL, .tokens = p1 - p0,
                          .attn_pairs = (p1 * (p1 + 1) - p0 * (p0 + 1)) / 2, .kv_rows = p1,
                          .logits_rows = i == 2};
        want += 1e3 * mr_cap_forward_s(&m, 1, &b);
    }
    mr_cap_prefill_row row;
    assert_int_equal(mr_cap_prefill_simulate(&m, 1, &r, 1, 1.0, 1, 1e9, &row), MR_OK);
    assert_near(row.ttft_p50_ms, want, 1e-9);
}

/* A deterministic synthetic trace: ~5 requests per second for 400 s. */
static mr_cap_request *synthetic_trace(int n)
{
    mr_cap_request *r = malloc(sizeof *r * (size_t)n);
    assert_non_null(r);
    uint64_t x = 88172645463325252ull;
    double t = 0;
    for (int i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        double u = ((x >> 11) + 0.5) / 9007199254740992.0;
        t += -log(u) * 0.2;
        r[i] = (mr_cap_request){t, 200 + (int)(x % 3000), 20 + (int)((x >> 20) % 400)};
    }
    return r;
}

static void test_more_load_never_needs_fewer_nodes(void **state)
{
    (void)state;
    mr_config c = v3_config();
    mr_cap_model m = model_on(&c, "h800");
    const int n = 2000;
    mr_cap_request *r = synthetic_trace(n);
    mr_cap_plan plan;
    int prev_prefill = 0, prev_decode = 0, first_prefill = 0, first_decode = 0;
    const double scales[] = {1, 32, 64, 128, 256};
    for (int i = 0; i < 5; i++) {
        assert_int_equal(mr_cap_plan_run(&m, r, n, scales[i], 1000, 40, &plan), MR_OK);
        assert_true(plan.prefill_nodes > 0 && plan.decode_nodes > 0);
        assert_true(plan.prefill_nodes >= prev_prefill);
        assert_true(plan.decode_nodes >= prev_decode);
        if (!first_prefill) first_prefill = plan.prefill_nodes;
        if (!first_decode) first_decode = plan.decode_nodes;
        prev_prefill = plan.prefill_nodes;
        prev_decode = plan.decode_nodes;
    }
    /* 256x the load does need more of both */
    assert_true(prev_prefill > first_prefill && prev_decode > first_decode);
    free(r);
}

static void test_tighter_tpot_never_needs_fewer_decode_nodes(void **state)
{
    (void)state;
    mr_config c = v3_config();
    mr_cap_model m = model_on(&c, "h800");
    mr_cap_trace_stats t = {.output_tok_s = 400e3, .decode_context = 2000};
    const double tpot[] = {200, 60, 40, 30, 25, 20};
    int prev = 0, loosest = 0;
    for (int i = 0; i < 6; i++) {
        int found = 0;
        for (int nodes = 2; nodes <= 1024 && !found; nodes++) {
            mr_cap_decode_row row;
            assert_int_equal(mr_cap_decode_evaluate(&m, &t, nodes, tpot[i], &row), MR_OK);
            if (row.meets) found = nodes;
        }
        assert_true(found >= prev);
        if (i == 0) loosest = found;
        prev = found;
    }
    assert_true(loosest > 0 && prev > loosest); /* 20 ms does need more nodes than 200 ms */
    mr_cap_decode_row loose, tight;
    assert_int_equal(mr_cap_decode_evaluate(&m, &t, prev, 200, &loose), MR_OK);
    assert_int_equal(mr_cap_decode_evaluate(&m, &t, prev, 20, &tight), MR_OK);
    assert_true(tight.meets && loose.meets);
    /* Little's law: the batch delivers the rate at its own step time */
    assert_near(loose.batch_per_gpu * 8 * prev / (loose.tpot_ms / 1e3), t.output_tok_s, 1e-6);
}

static void test_decode_is_overloaded_when_the_kv_limit_cannot_deliver_the_rate(void **state)
{
    (void)state;
    mr_config c = v3_config();
    mr_cap_model m = model_on(&c, "h800");
    mr_cap_trace_stats t = {.output_tok_s = 1e7, .decode_context = 30000};
    mr_cap_decode_row row;
    assert_int_equal(mr_cap_decode_evaluate(&m, &t, 2, 1e6, &row), MR_OK);
    assert_true(row.overloaded && !row.meets);
    assert_true(row.utilization > 1.0);
}

/* ---- decode layouts: EP on decode vs attention-FFN disaggregation ---------- */

static void test_disaggregated_network_bytes_per_token_per_moe_layer_equal_hand_computed(
    void **state)
{
    (void)state;
    mr_config c = tiny_config();
    mr_cap_model m = model_on(&c, "h800");
    /* K = 2 copies of D = 4 values: bf16 out (2 B) + bf16 back (2 B) */
    assert_near(mr_cap_afd_net_bytes_per_token(&m), 2 * 4 * (2 + 2), 1e-12);
    m.dep.weight_bytes = 1; /* fp8 dispatch: 1 B out + 2 B back */
    assert_near(mr_cap_afd_net_bytes_per_token(&m), 2 * 4 * (1 + 2), 1e-12);

    /* 8 attention GPUs with 10 tokens each, 16 expert GPUs */
    m.dep.weight_bytes = 2;
    mr_cap_batch b = {.phase = MR_CAP_DECODE, .tokens = 10, .attn_pairs = 50, .kv_rows = 50};
    mr_cap_work attn, experts;
    mr_cap_afd_layer_work(&m, 8, 16, true, &b, &attn, &experts);
    assert_near(attn.net_bytes, 10 * 2 * 4 * 4, 1e-12); /* every copy crosses the network */
    assert_near(attn.nvlink_bytes, 0, 1e-12);           /* no NVLink shortcut */
    /* an expert GPU: 80 tokens * K 2 / 16 GPUs = 10 rows of 4 * (2 + 2) bytes */
    assert_near(experts.net_bytes, 10 * 4 * 4, 1e-12);
    assert_near(experts.gemm_flops, 2 * 10 * 24, 1e-12);
    /* ceil(4 / 16) = 1 expert held, touched with probability 1 - (1/2)^80 */
    assert_near(experts.hbm_bytes, (1 - pow(0.5, 80)) * 24 * 2, 1e-12);
    /* the attention GPU: attention 74 + router 4x4 bf16 + shared 24, KV 50 rows,
     * no routed experts */
    assert_near(attn.hbm_bytes, 2 * 74 + 50 * 3 * 2 + 32 + 2 * 24, 1e-12);
    assert_near(attn.gemm_flops, 2 * 10 * (74 + 24), 1e-12);
    assert_near(attn.bf16_flops, 2 * 50 * (4 * 2 + 2 * 1) + 2 * 10 * 16, 1e-12);
    mr_cap_afd_layer_work(&m, 8, 16, false, &b, &attn, &experts); /* dense: attention GPU only */
    assert_near(attn.net_bytes + experts.net_bytes + experts.hbm_bytes, 0, 1e-12);

    /* the two tiers hold the EP GPU's weights between them */
    assert_near(mr_cap_afd_attn_weight_bytes(&m), 340 + (148 + 32 + 48) + 160, 1e-12);
    assert_near(mr_cap_afd_expert_weight_bytes(&m, 2), 2 * 48, 1e-12);
    assert_near(mr_cap_afd_attn_weight_bytes(&m) + mr_cap_afd_expert_weight_bytes(&m, 2),
                mr_cap_weight_bytes_per_gpu(&m, 2), 1e-12);
}

static void test_disaggregated_moe_layer_is_attention_plus_experts_unless_network_is_longer(
    void **state)
{
    (void)state;
    mr_config c = v3_config();
    mr_cap_model m = model_on(&c, "h800");
    for (int slow = 0; slow < 2; slow++) {
        if (slow) m.hw.net_bytes_per_s = 1e9;
        mr_cap_batch b = {.phase = MR_CAP_DECODE, .tokens = 32, .attn_pairs = 32 * 2000.0,
                          .kv_rows = 32 * 2000.0, .logits_rows = 32};
        mr_cap_work attn, experts, head;
        mr_cap_terms ta, te;
        mr_cap_afd_layer_work(&m, 16, 32, false, &b, &attn, &experts);
        const double dense = mr_cap_work_s(&m, &attn);
        mr_cap_afd_layer_work(&m, 16, 32, true, &b, &attn, &experts);
        mr_cap_work_terms(&m, &attn, &ta);
        mr_cap_work_terms(&m, &experts, &te);
        const double compute = fmax(ta.hbm_s, ta.math_s) + fmax(te.hbm_s, te.math_s);
        const double net = fmax(ta.net_s, te.net_s);
        assert_true(slow ? net > compute : net < compute); /* both cases are exercised */
        mr_cap_head_work(&m, &b, &head);
        mr_cap_split split;
        const double step = mr_cap_afd_step_s(&m, 16, 32, 32, 2000, &split);
        assert_near(step, 3 * dense + 58 * fmax(compute, net) + mr_cap_work_s(&m, &head), 1e-12);
        /* the split accounts for the whole step */
        assert_near(split.hbm_s + split.math_s + split.nvlink_s + split.net_s, step, 1e-12);
        assert_true(slow ? split.expert_s == 0 && split.net_s > 0.5 * step
                         : split.net_s == 0 && split.expert_s > 0);
    }
}

/* EP on decode's answer as the plan's search finds it: the fewest nodes that meet. */
static int ep_answer(const mr_cap_model *m, const mr_cap_trace_stats *t, double tpot_ms)
{
    for (int nodes = 1; nodes <= m->dep.max_nodes; nodes++) {
        mr_cap_decode_row row;
        assert_int_equal(mr_cap_decode_evaluate(m, t, nodes, tpot_ms, &row), MR_OK);
        if (row.meets) return nodes;
    }
    return 0;
}

static void test_slow_network_makes_ep_on_decode_win(void **state)
{
    (void)state;
    mr_config c = v3_config();
    /* H200: one node (EP8) holds V3, so EP on decode needs NVLink only, while
     * the disaggregated layout sends every token's K copies over the network */
    mr_cap_model m = model_on(&c, "h200");
    m.dep.max_nodes = 64;
    const char *slow = "{\"net_gb_s\": 0.1}";
    assert_int_equal(mr_cap_hw_apply_json(slow, strlen(slow), "gpu.json", &m.hw), MR_OK);
    mr_cap_trace_stats t = {.output_tok_s = 2000, .decode_context = 2000};
    const int ep = ep_answer(&m, &t, 50);
    assert_int_equal(ep, 1);
    mr_cap_layouts l;
    assert_int_equal(mr_cap_layouts_compare(&m, &t, 50, ep, &l), MR_OK);
    assert_int_equal(l.winner, MR_CAP_LAYOUT_EP);
    assert_true(l.ep.meets && l.ep.nodes == 1);
    assert_true(l.afd.nodes == 0 || mr_cap_layout_total_nodes(&l.afd) > 1);
    /* and the same slow network makes a one-attention-node AFD miss on its own */
    mr_cap_layout_row row;
    assert_int_equal(mr_cap_afd_evaluate(&m, &t, 1, l.afd_min_expert_nodes, 50, &row), MR_OK);
    assert_false(row.meets);
}

static void test_tiny_hbm_and_abundant_network_make_disaggregation_need_fewer_nodes(void **state)
{
    (void)state;
    mr_config c = v3_config();
    /* 30 GB HBM (27 GB usable): every EP GPU repeats the ~19 GB of non-expert
     * weights beside its experts, so EP needs 3 experts per GPU or fewer: 11
     * nodes before it can hold one sequence. The disaggregated layout keeps
     * the non-expert weights on the attention GPUs only: 4 expert nodes hold
     * the experts (8 per GPU), and one attention node has ~8 GB of KV. With a
     * 10 TB/s network the extra all-to-all costs nothing. */
    mr_cap_model m = model_on(&c, "h800");
    m.dep.max_nodes = 256;
    const char *j = "{\"hbm_gb\": 30, \"net_gb_s\": 10000}";
    assert_int_equal(mr_cap_hw_apply_json(j, strlen(j), "gpu.json", &m.hw), MR_OK);
    mr_cap_trace_stats t = {.output_tok_s = 2000, .decode_context = 1000};
    const int ep = ep_answer(&m, &t, 100);
    assert_true(ep >= 11);
    mr_cap_layouts l;
    assert_int_equal(mr_cap_layouts_compare(&m, &t, 100, ep, &l), MR_OK);
    assert_int_equal(l.afd_min_expert_nodes, 4);
    assert_true(l.ep.meets && l.afd.meets);
    assert_int_equal(l.ep.binds, MR_CAP_BIND_WEIGHTS);
    assert_true(mr_cap_layout_total_nodes(&l.afd) <= 5);
    assert_true(mr_cap_layout_total_nodes(&l.afd) < mr_cap_layout_total_nodes(&l.ep));
    assert_int_equal(l.winner, MR_CAP_LAYOUT_AFD);
    char note[160];
    mr_cap_layout_note(&l.ep, note, sizeof note);
    assert_non_null(strstr(note, "weights; step"));
}

static void test_disaggregated_search_finds_the_fewest_total_nodes(void **state)
{
    (void)state;
    mr_config c = v3_config();
    mr_cap_model m = model_on(&c, "h800");
    m.dep.max_nodes = 128;
    mr_cap_trace_stats t = {.output_tok_s = 300e3, .decode_context = 3000};
    mr_cap_layouts l;
    assert_int_equal(mr_cap_layouts_compare(&m, &t, 50, 0, &l), MR_OK);
    const int total = mr_cap_layout_total_nodes(&l.afd);
    assert_true(total > 0 && l.afd.meets && l.afd.tpot_ms <= 50);
    assert_int_equal(l.winner, MR_CAP_LAYOUT_AFD); /* no EP answer was given */
    /* brute force: no pair with fewer nodes in total meets the target */
    for (int e = l.afd_min_expert_nodes; e < total; e++)
        for (int a = 1; a + e < total; a++) {
            mr_cap_layout_row row;
            assert_int_equal(mr_cap_afd_evaluate(&m, &t, a, e, 50, &row), MR_OK);
            if (row.meets) fail_msg("%d attention + %d expert nodes meet, the search said %d", a,
                                    e, total);
        }
    /* and fewer expert nodes than the fewest that hold the experts never fit */
    mr_cap_layout_row row;
    assert_int_equal(mr_cap_afd_evaluate(&m, &t, 64, l.afd_min_expert_nodes - 1, 1e9, &row),
                     MR_OK);
    assert_true(row.overloaded && row.batch_limit == 0);
}

static void test_a_tie_in_total_nodes_goes_to_ep_on_decode(void **state)
{
    (void)state;
    mr_config c = v3_config();
    /* H20 (96 GB): one node holds the experts alone, two hold EP */
    mr_cap_model m = model_on(&c, "h20");
    mr_cap_trace_stats t = {.output_tok_s = 2000, .decode_context = 2000};
    mr_cap_layouts l;
    const int ep = ep_answer(&m, &t, 50);
    assert_int_equal(mr_cap_layouts_compare(&m, &t, 50, ep, &l), MR_OK);
    assert_int_equal(l.afd_min_expert_nodes, 1);
    assert_true(l.ep.meets && l.afd.meets);
    assert_int_equal(mr_cap_layout_total_nodes(&l.ep), 2);
    assert_int_equal(mr_cap_layout_total_nodes(&l.afd), 2);
    assert_int_equal(l.winner, MR_CAP_LAYOUT_EP);
}

static void test_comparison_never_reports_a_layout_that_misses_tpot_as_the_winner(void **state)
{
    (void)state;
    mr_config c = v3_config();
    const char *gpus[] = {"h800", "h20", "h200"};
    const double tpots[] = {1, 15, 30, 50, 100};
    const double rates[] = {2e3, 50e3, 300e3};
    int seen[3] = {0};
    for (int g = 0; g < 3; g++) {
        mr_cap_model m = model_on(&c, gpus[g]);
        m.dep.max_nodes = 96;
        for (int i = 0; i < 5; i++)
            for (int k = 0; k < 3; k++) {
                mr_cap_trace_stats t = {.output_tok_s = rates[k], .decode_context = 2000};
                mr_cap_layouts l;
                const int ep = ep_answer(&m, &t, tpots[i]);
                assert_int_equal(mr_cap_layouts_compare(&m, &t, tpots[i], ep, &l), MR_OK);
                seen[l.winner]++;
                const mr_cap_layout_row *win = l.winner == MR_CAP_LAYOUT_EP ? &l.ep : &l.afd;
                const mr_cap_layout_row *other = l.winner == MR_CAP_LAYOUT_EP ? &l.afd : &l.ep;
                if (l.winner == MR_CAP_LAYOUT_NONE) {
                    assert_false(l.ep.meets || l.afd.meets);
                    continue;
                }
                assert_true(win->nodes > 0 && win->meets && !win->overloaded);
                assert_true(win->tpot_ms <= tpots[i]);
                if (other->nodes && other->meets)
                    assert_true(mr_cap_layout_total_nodes(win) <=
                                mr_cap_layout_total_nodes(other));
            }
    }
    assert_true(seen[MR_CAP_LAYOUT_NONE] > 0 && seen[MR_CAP_LAYOUT_EP] > 0); /* 1 ms: none */

    /* an EP node count that misses is re-evaluated, never trusted */
    mr_cap_model m = model_on(&c, "h800");
    mr_cap_trace_stats t = {.output_tok_s = 300e3, .decode_context = 2000};
    mr_cap_layouts l;
    assert_int_equal(mr_cap_layouts_compare(&m, &t, 50, 2, &l), MR_OK);
    assert_true(l.ep.nodes == 2 && !l.ep.meets);
    assert_int_not_equal(l.winner, MR_CAP_LAYOUT_EP);
}

/* ---- traces --------------------------------------------------------------- */

static char *write_temp(const char *text)
{
    static char path[64];
    snprintf(path, sizeof path, "/tmp/moerun-trace-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

static void test_azure_csv_arrivals_are_seconds_from_the_first_row(void **state)
{
    (void)state;
    char *path = write_temp("TIMESTAMP,ContextTokens,GeneratedTokens\r\n"
                            "2023-11-16 23:59:59.5000000,374,44\r\n"
                            "2023-11-17 00:00:01.2500000,396,109\r\n"
                            "\n"
                            "2023-11-17 00:00:01.2500000,7,0\n");
    mr_trace t;
    assert_int_equal(mr_trace_load(path, &t), MR_OK);
    unlink(path);
    assert_string_equal(t.format, "azure-csv");
    assert_int_equal(t.n, 3);
    assert_near(t.reqs[0].arrival_s, 0.0, 1e-12);
    assert_near(t.reqs[1].arrival_s, 1.75, 1e-9); /* across midnight */
    assert_int_equal(t.reqs[1].input_tokens, 396);
    assert_int_equal(t.reqs[1].output_tokens, 109);
    assert_int_equal(t.reqs[2].output_tokens, 0);
    mr_trace_free(&t);
}

static void test_mooncake_jsonl_timestamps_are_milliseconds(void **state)
{
    (void)state;
    const char *text = "{\"timestamp\": 1000, \"input_length\": 6758, \"output_length\": 500, "
                       "\"hash_ids\": [0, 1, 2]}\n"
                       "{\"timestamp\": 3500, \"input_length\": 10, \"output_length\": 3}\n";
    mr_trace t;
    assert_int_equal(mr_trace_parse(text, strlen(text), "m.jsonl", &t), MR_OK);
    assert_string_equal(t.format, "mooncake-jsonl");
    assert_int_equal(t.n, 2);
    assert_near(t.reqs[1].arrival_s, 2.5, 1e-12);
    assert_int_equal(t.reqs[0].input_tokens, 6758);
    assert_int_equal(t.reqs[0].output_tokens, 500);
    mr_trace_free(&t);
}

static void test_out_of_order_rows_are_sorted_stably(void **state)
{
    (void)state;
    const char *text = "TIMESTAMP,ContextTokens,GeneratedTokens\n10,1,1\n5,2,2\n10,3,3\n";
    mr_trace t;
    assert_int_equal(mr_trace_parse(text, strlen(text), "s.csv", &t), MR_OK);
    assert_int_equal(t.reqs[0].input_tokens, 2);
    assert_int_equal(t.reqs[1].input_tokens, 1);
    assert_int_equal(t.reqs[2].input_tokens, 3);
    assert_near(t.reqs[2].arrival_s, 5.0, 1e-12);
    mr_trace_free(&t);
}

static void expect_trace_error(const char *text, const char *needle)
{
    mr_trace t;
    assert_int_not_equal(mr_trace_parse(text, strlen(text), "trace.csv", &t), MR_OK);
    if (!strstr(mr_last_error(), needle))
        fail_msg("message '%s' lacks '%s'", mr_last_error(), needle);
}

static void test_malformed_rows_are_rejected_naming_the_line(void **state)
{
    (void)state;
    const char *head = "TIMESTAMP,ContextTokens,GeneratedTokens\n";
    char text[512];
    snprintf(text, sizeof text, "%s2023-11-16 18:15:46.68,374,44\n2023-11-16 18:15:47,396\n", head);
    expect_trace_error(text, "trace.csv:3: expected 3 comma-separated fields");
    snprintf(text, sizeof text, "%s2023-11-16 18:15:46.68,374,44,9\n", head);
    expect_trace_error(text, "trace.csv:2: expected 3 comma-separated fields");
    snprintf(text, sizeof text, "%s2023-11-16 18:15:46,0,44\n", head);
    expect_trace_error(text, "trace.csv:2: ContextTokens");
    snprintf(text, sizeof text, "%s2023-13-16 18:15:46,3,44\n", head);
    expect_trace_error(text, "trace.csv:2: bad TIMESTAMP");
    snprintf(text, sizeof text, "%s1,3,x\n", head);
    expect_trace_error(text, "trace.csv:2: GeneratedTokens");
    expect_trace_error("time,in,out\n1,2,3\n", "trace.csv:1: expected the header");
    expect_trace_error(head, "no requests");
    expect_trace_error("{\"timestamp\": 0, \"input_length\": 5, \"output_length\": 1}\n"
                       "{\"timestamp\": 1, \"input_length\": 5}\n",
                       "trace.csv:2: missing key \"output_length\"");
    expect_trace_error("{\"timestamp\": 0, \"input_length\": 5, \"output_length\": 1}\n\n"
                       "{\"timestamp\": 1, \"input_length\": 5.5, \"output_length\": 1}\n",
                       "trace.csv:3: \"input_length\" must be an integer");
    expect_trace_error("{\"timestamp\": 0, \"input_length\": 5, \"output_length\": 1}\n[1]\n",
                       "trace.csv:2: expected a JSON object");
}

/* ---- profiles and calibration ---------------------------------------------- */

static void test_gpu_profiles_and_json_overrides(void **state)
{
    (void)state;
    mr_cap_hw hw;
    assert_int_equal(mr_cap_hw_profile("H800", &hw), MR_OK);
    assert_near(hw.hbm_bytes_per_s, 3.35e12, 1e-12);
    assert_near(hw.nvlink_bytes_per_s, 200e9, 1e-12);
    assert_int_equal(hw.gpus_per_node, 8);
    assert_int_equal(mr_cap_hw_profile("h20", &hw), MR_OK);
    assert_near(hw.fp8_flops_per_s, 296e12, 1e-12);
    assert_int_equal(mr_cap_hw_profile("h900", &hw), MR_EINVAL);
    assert_non_null(strstr(mr_last_error(), "h800|h20|h100|h200"));

    assert_int_equal(mr_cap_hw_profile("h800", &hw), MR_OK);
    const char *j = "{\"net_gb_s\": 25, \"hbm_gb\": 96, \"name\": \"h800-roce\"}";
    assert_int_equal(mr_cap_hw_apply_json(j, strlen(j), "gpu.json", &hw), MR_OK);
    assert_near(hw.net_bytes_per_s, 25e9, 1e-12);
    assert_near(hw.hbm_bytes, 96e9, 1e-12);
    assert_near(hw.fp8_flops_per_s, 1978.9e12, 1e-12); /* untouched */
    assert_string_equal(hw.name, "h800-roce");
    j = "{\"hbm_gbs\": 1}";
    assert_int_equal(mr_cap_hw_apply_json(j, strlen(j), "gpu.json", &hw), MR_EINVAL);
    assert_non_null(strstr(mr_last_error(), "gpu.json: unknown key 'hbm_gbs'"));
    j = "{\"hbm_tb_s\": -1}";
    assert_int_equal(mr_cap_hw_apply_json(j, strlen(j), "gpu.json", &hw), MR_EINVAL);
    assert_near(hw.hbm_bytes, 96e9, 1e-12); /* a failed override changes nothing */
}

static void test_calibration_is_the_median_roofline_ratio(void **state)
{
    (void)state;
    const char *j = "{\"bench\": \"layer\", \"device\": \"NVIDIA H800\","
                    " \"copy_bytes_per_s\": 1e10, \"matmul_flops_per_s\": 1e11,"
                    " \"rows\": [{\"batch\": 1, \"moe_layer_ms\": 2.0, \"moe_roofline_ms\": 1.8},"
                    " {\"batch\": 8, \"moe_layer_ms\": 4.0, \"moe_roofline_ms\": 2.0},"
                    " {\"batch\": 32, \"moe_layer_ms\": 0, \"moe_roofline_ms\": 2.0},"
                    " {\"batch\": 64, \"moe_layer_ms\": 10.0, \"moe_roofline_ms\": 7.0}]}";
    double eff = 0;
    int rows = 0;
    char device[64];
    assert_int_equal(mr_cap_calibration_parse(j, strlen(j), "b.json", &eff, &rows, device,
                                              sizeof device), MR_OK);
    assert_string_equal(device, "NVIDIA H800");
    assert_int_equal(rows, 3); /* the row without a measurement is skipped */
    assert_near(eff, 0.7, 1e-12); /* median of 0.9, 0.5, 0.7 */
    j = "{\"rows\": []}";
    assert_int_equal(mr_cap_calibration_parse(j, strlen(j), "b.json", &eff, &rows, device,
                                              sizeof device), MR_EINVAL);
}

/* ---- sanity band ------------------------------------------------------------- */

static void test_sanity_band_v3_on_h800_within_3x_of_deepseek_published(void **state)
{
    (void)state;
    char path[4096];
    snprintf(path, sizeof path, "%s/models/deepseek-ai--DeepSeek-V3.config.json", shared_dir);
    if (access(path, R_OK) != 0) skip();
    mr_config c;
    assert_int_equal(mr_config_load(path, &c), MR_OK);
    mr_cap_model m = model_on(&c, "h800");
    assert_int_equal(m.dep.weight_bytes, 1); /* the config's quantization_config: fp8 */
    /* DeepSeek's layout: prefill EP32 (4 nodes), decode EP144 (18 nodes);
     * prompts of ~1.2k tokens, decode contexts of ~2k, TPOT <= 50 ms */
    double prefill = mr_cap_prefill_node_tok_s(&m, 32, 1155);
    double decode = 0;
    int batch = mr_cap_decode_capacity(&m, 144, 2048, 50, &decode);
    print_message("V3 on H800: prefill %.0f tok/s/node (published %.0f), decode %.0f tok/s/node "
                  "at batch %d (published %.0f)\n", prefill, MR_CAP_DEEPSEEK_PREFILL_TOK_S, decode,
                  batch, MR_CAP_DEEPSEEK_DECODE_TOK_S);
    assert_true(prefill > MR_CAP_DEEPSEEK_PREFILL_TOK_S / 3 &&
                prefill < MR_CAP_DEEPSEEK_PREFILL_TOK_S * 3);
    assert_true(decode > MR_CAP_DEEPSEEK_DECODE_TOK_S / 3 &&
                decode < MR_CAP_DEEPSEEK_DECODE_TOK_S * 3);
}

int main(int argc, char **argv)
{
    if (argc > 1) shared_dir = argv[1];
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny_layer_bytes_and_flops_equal_hand_computed),
        cmocka_unit_test(test_all_to_all_volume_per_layer_equals_hand_computed),
        cmocka_unit_test(test_roofline_takes_the_slowest_of_memory_math_and_links),
        cmocka_unit_test(test_weights_per_gpu_equal_hand_computed),
        cmocka_unit_test(test_decode_step_grows_with_batch_and_context),
        cmocka_unit_test(test_kv_memory_bounds_the_decode_batch),
        cmocka_unit_test(test_des_ttft_of_a_lone_request_is_its_service_time),
        cmocka_unit_test(test_des_second_request_waits_for_the_only_gpu),
        cmocka_unit_test(test_des_splits_a_long_prompt_into_chunks),
        cmocka_unit_test(test_more_load_never_needs_fewer_nodes),
        cmocka_unit_test(test_tighter_tpot_never_needs_fewer_decode_nodes),
        cmocka_unit_test(test_decode_is_overloaded_when_the_kv_limit_cannot_deliver_the_rate),
        cmocka_unit_test(
            test_disaggregated_network_bytes_per_token_per_moe_layer_equal_hand_computed),
        cmocka_unit_test(
            test_disaggregated_moe_layer_is_attention_plus_experts_unless_network_is_longer),
        cmocka_unit_test(test_slow_network_makes_ep_on_decode_win),
        cmocka_unit_test(test_tiny_hbm_and_abundant_network_make_disaggregation_need_fewer_nodes),
        cmocka_unit_test(test_disaggregated_search_finds_the_fewest_total_nodes),
        cmocka_unit_test(test_a_tie_in_total_nodes_goes_to_ep_on_decode),
        cmocka_unit_test(test_comparison_never_reports_a_layout_that_misses_tpot_as_the_winner),
        cmocka_unit_test(test_azure_csv_arrivals_are_seconds_from_the_first_row),
        cmocka_unit_test(test_mooncake_jsonl_timestamps_are_milliseconds),
        cmocka_unit_test(test_out_of_order_rows_are_sorted_stably),
        cmocka_unit_test(test_malformed_rows_are_rejected_naming_the_line),
        cmocka_unit_test(test_gpu_profiles_and_json_overrides),
        cmocka_unit_test(test_calibration_is_the_median_roofline_ratio),
        cmocka_unit_test(test_sanity_band_v3_on_h800_within_3x_of_deepseek_published),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
