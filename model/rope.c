/* model/rope.c — see rope.h. */
#include "rope.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static double yarn_get_mscale(double scale, double mscale)
{
    return scale <= 1.0 ? 1.0 : 0.1 * mscale * log(scale) + 1.0;
}

static double yarn_correction_dim(double n_rot, int dim, double base, int max_pos)
{
    return dim * log(max_pos / (n_rot * 2.0 * M_PI)) / (2.0 * log(base));
}

static void compute_inv_freq(const mr_config *c, double *inv_freq)
{
    const int dim = c->qk_rope_head_dim;
    for (int j = 0; j < dim / 2; j++) inv_freq[j] = 1.0 / pow(c->rope_theta, (2.0 * j) / dim);
    if (!c->yarn_enabled) return;
    const int orig = c->yarn_original_max_position_embeddings;
    double low = floor(yarn_correction_dim(c->yarn_beta_fast, dim, c->rope_theta, orig));
    double high = ceil(yarn_correction_dim(c->yarn_beta_slow, dim, c->rope_theta, orig));
    if (low < 0) low = 0;
    if (high > dim - 1) high = dim - 1;
    if (low == high) high += 0.001;
    for (int j = 0; j < dim / 2; j++) {
        double ramp = (j - low) / (high - low);
        ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
        double smooth = 1.0 - ramp;
        inv_freq[j] = inv_freq[j] / c->yarn_factor * (1.0 - smooth) + inv_freq[j] * smooth;
    }
}

mr_status mr_rope_init(const mr_config *cfg, mr_rope *out)
{
    memset(out, 0, sizeof *out);
    out->half = cfg->qk_rope_head_dim / 2;
    out->inv_freq = calloc((size_t)out->half + 1, sizeof(double));
    if (!out->inv_freq) return mr_fail(MR_ENOMEM, "rope: out of memory");
    compute_inv_freq(cfg, out->inv_freq);
    double scale = 1.0 / sqrt((double)mr_config_qk_head_dim(cfg));
    out->mscale = 1.0f;
    if (cfg->yarn_enabled) {
        double m_all = yarn_get_mscale(cfg->yarn_factor, cfg->yarn_mscale_all_dim);
        scale *= m_all * m_all;
        out->mscale = (float)(yarn_get_mscale(cfg->yarn_factor, cfg->yarn_mscale) / m_all);
    }
    out->softmax_scale = (float)scale;
    return MR_OK;
}

void mr_rope_free(mr_rope *r)
{
    free(r->inv_freq);
    memset(r, 0, sizeof *r);
}

void mr_rope_at(const mr_rope *r, int pos, float *cos_out, float *sin_out)
{
    for (int j = 0; j < r->half; j++) {
        double angle = (double)pos * r->inv_freq[j];
        cos_out[j] = (float)(cos(angle) * r->mscale);
        sin_out[j] = (float)(sin(angle) * r->mscale);
    }
}
