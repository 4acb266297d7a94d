/* planner/hw_profiles.c — built-in GPU profiles, JSON overrides of their
 * fields, and the efficiency calibration read from `moerun bench layer
 * --json`. Contract in capacity.h. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "capacity.h"
#include "../common/stats.h"

/* Public spec-sheet figures per GPU (SXM parts, HGX 8-GPU baseboards).
 *   hbm_gb      HBM capacity, GB (1e9 bytes) as the data sheet states it
 *   hbm_tb_s    HBM bandwidth, TB/s
 *   bf16_tflops dense BF16 tensor-core peak, TFLOP/s (the sheets' "with sparsity" / 2)
 *   fp8_tflops  dense FP8 tensor-core peak, TFLOP/s (same)
 *   nvlink_gb_s NVLink bandwidth per GPU in one direction, GB/s (the sheets
 *               give both directions: 900 GB/s -> 450; H800's 400 GB/s -> 200)
 *   net_gb_s    scale-out per GPU in one direction, GB/s: one 400 Gb/s
 *               ConnectX-7 NIC per GPU, the usual HGX build (not a GPU spec;
 *               DeepSeek-V3 report: "IB 50 GB/s")
 *   gpus        GPUs per node */
static const struct hw_row {
    const char *name;
    double hbm_gb, hbm_tb_s, bf16_tflops, fp8_tflops, nvlink_gb_s, net_gb_s;
    int gpus;
} hw_table[] = {
    /* name     hbm_gb hbm_tb_s bf16_tflops fp8_tflops nvlink_gb_s net_gb_s gpus */
    {"h800",    80,    3.35,    989.4,      1978.9,    200,        50,      8},
    {"h20",     96,    4.0,     148.0,      296.0,     450,        50,      8},
    {"h100",    80,    3.35,    989.4,      1978.9,    450,        50,      8},
    {"h200",    141,   4.8,     989.4,      1978.9,    450,        50,      8},
};

static void hw_from_row(const struct hw_row *r, mr_cap_hw *out)
{
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "%s", r->name);
    out->hbm_bytes = r->hbm_gb * 1e9;
    out->hbm_bytes_per_s = r->hbm_tb_s * 1e12;
    out->bf16_flops_per_s = r->bf16_tflops * 1e12;
    out->fp8_flops_per_s = r->fp8_tflops * 1e12;
    out->nvlink_bytes_per_s = r->nvlink_gb_s * 1e9;
    out->net_bytes_per_s = r->net_gb_s * 1e9;
    out->gpus_per_node = r->gpus;
}

mr_status mr_cap_hw_profile(const char *name, mr_cap_hw *out)
{
    for (size_t i = 0; name && i < sizeof hw_table / sizeof hw_table[0]; i++)
        if (!strcasecmp(name, hw_table[i].name)) {
            hw_from_row(&hw_table[i], out);
            return MR_OK;
        }
    return mr_fail(MR_EINVAL, "--gpu: expected one of %s, got '%s'", MR_CAP_HW_NAMES,
                   name ? name : "(missing)");
}

/* JSON key -> field and the unit that multiplies it. */
static const struct hw_key {
    const char *key;
    size_t offset;
    double unit;
} hw_keys[] = {
    {"hbm_gb", offsetof(mr_cap_hw, hbm_bytes), 1e9},
    {"hbm_tb_s", offsetof(mr_cap_hw, hbm_bytes_per_s), 1e12},
    {"bf16_tflops", offsetof(mr_cap_hw, bf16_flops_per_s), 1e12},
    {"fp8_tflops", offsetof(mr_cap_hw, fp8_flops_per_s), 1e12},
    {"nvlink_gb_s", offsetof(mr_cap_hw, nvlink_bytes_per_s), 1e9},
    {"net_gb_s", offsetof(mr_cap_hw, net_bytes_per_s), 1e9},
};

static mr_status apply_item(const cJSON *item, const char *origin, mr_cap_hw *hw)
{
    if (!strcmp(item->string, "name")) {
        if (!cJSON_IsString(item) || !item->valuestring[0])
            return mr_fail(MR_EINVAL, "%s: key name must be a non-empty string", origin);
        snprintf(hw->name, sizeof hw->name, "%s", item->valuestring);
        return MR_OK;
    }
    if (!cJSON_IsNumber(item) || !isfinite(item->valuedouble) || item->valuedouble <= 0)
        return mr_fail(MR_EINVAL, "%s: key %s must be a positive number", origin, item->string);
    if (!strcmp(item->string, "gpus_per_node")) {
        double v = item->valuedouble;
        if (v != floor(v) || v > 1024)
            return mr_fail(MR_EINVAL, "%s: key gpus_per_node must be an integer in [1, 1024]",
                           origin);
        hw->gpus_per_node = (int)v;
        return MR_OK;
    }
    for (size_t k = 0; k < sizeof hw_keys / sizeof hw_keys[0]; k++)
        if (!strcmp(item->string, hw_keys[k].key)) {
            *(double *)((char *)hw + hw_keys[k].offset) = item->valuedouble * hw_keys[k].unit;
            return MR_OK;
        }
    return mr_fail(MR_EINVAL, "%s: unknown key '%s' (known: name, hbm_gb, hbm_tb_s, bf16_tflops, "
                   "fp8_tflops, nvlink_gb_s, net_gb_s, gpus_per_node)", origin, item->string);
}

mr_status mr_cap_hw_apply_json(const char *text, size_t len, const char *origin, mr_cap_hw *hw)
{
    cJSON *root = cJSON_ParseWithLength(text, len);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return mr_fail(MR_EINVAL, "%s: expected a JSON object of GPU profile fields", origin);
    }
    mr_cap_hw next = *hw;
    mr_status st = MR_OK;
    const cJSON *item;
    cJSON_ArrayForEach(item, root) {
        st = apply_item(item, origin, &next);
        if (st != MR_OK) break;
    }
    cJSON_Delete(root);
    if (st == MR_OK) *hw = next;
    return st;
}

mr_status mr_cap_calibration_parse(const char *text, size_t len, const char *origin,
                                   double *efficiency, int *n_rows, char *device,
                                   size_t device_cap)
{
    cJSON *root = cJSON_ParseWithLength(text, len);
    const cJSON *rows = cJSON_GetObjectItemCaseSensitive(root, "rows");
    if (!cJSON_IsArray(rows)) {
        cJSON_Delete(root);
        return mr_fail(MR_EINVAL, "%s: expected the JSON of `moerun bench layer --json` "
                       "(an object with a \"rows\" array)", origin);
    }
    const cJSON *dev = cJSON_GetObjectItemCaseSensitive(root, "device");
    if (device_cap > 0)
        snprintf(device, device_cap, "%s", cJSON_IsString(dev) ? dev->valuestring : "");
    int cap = cJSON_GetArraySize(rows), n = 0;
    double *ratio = malloc(sizeof(double) * (size_t)(cap > 0 ? cap : 1));
    if (!ratio) {
        cJSON_Delete(root);
        return mr_fail(MR_ENOMEM, "%s: out of memory", origin);
    }
    const cJSON *row;
    cJSON_ArrayForEach(row, rows) {
        const cJSON *meas = cJSON_GetObjectItemCaseSensitive(row, "moe_layer_ms");
        const cJSON *roof = cJSON_GetObjectItemCaseSensitive(row, "moe_roofline_ms");
        if (cJSON_IsNumber(meas) && cJSON_IsNumber(roof) && meas->valuedouble > 0 &&
            roof->valuedouble > 0 && isfinite(meas->valuedouble) && isfinite(roof->valuedouble))
            ratio[n++] = roof->valuedouble / meas->valuedouble;
    }
    cJSON_Delete(root);
    if (n == 0) {
        free(ratio);
        return mr_fail(MR_EINVAL, "%s: no row has positive moe_layer_ms and moe_roofline_ms",
                       origin);
    }
    mr_sort_doubles(ratio, (size_t)n);
    double median = n % 2 ? ratio[n / 2] : 0.5 * (ratio[n / 2 - 1] + ratio[n / 2]);
    free(ratio);
    *efficiency = median < 1.0 ? median : 1.0;
    *n_rows = n;
    return MR_OK;
}
