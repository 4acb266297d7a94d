/* common/svg_chart.c — see svg_chart.h. */
#include "svg_chart.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PANEL_W 520.0
#define PANEL_H 360.0
#define MARGIN_L 70.0
#define MARGIN_R 20.0
#define MARGIN_T 40.0
#define MARGIN_B 55.0
#define HEADER 40.0

static const char *const colors[MR_SVG_MAX_SERIES] = {"#1f77b4", "#d62728", "#2ca02c",
                                                      "#ff7f0e", "#9467bd", "#8c564b"};

void mr_svg_init(mr_svg_chart *c, const char *title, int cols, int rows)
{
    memset(c, 0, sizeof *c);
    snprintf(c->title, sizeof c->title, "%s", title);
    c->cols = cols > 0 ? cols : 1;
    c->rows = rows > 0 ? rows : 1;
    if (c->cols * c->rows > MR_SVG_MAX_PANELS) c->rows = MR_SVG_MAX_PANELS / c->cols;
}

mr_svg_panel *mr_svg_panel_at(mr_svg_chart *c, int index)
{
    return index >= 0 && index < c->cols * c->rows ? &c->panels[index] : NULL;
}

void mr_svg_set_labels(mr_svg_panel *p, const char *title, const char *x_label,
                       const char *y_label)
{
    snprintf(p->title, sizeof p->title, "%s", title);
    snprintf(p->x_label, sizeof p->x_label, "%s", x_label);
    snprintf(p->y_label, sizeof p->y_label, "%s", y_label);
}

mr_status mr_svg_add_series(mr_svg_panel *p, const char *name, const double *x, const double *y,
                            size_t n)
{
    if (p->n_series == MR_SVG_MAX_SERIES)
        return mr_fail(MR_EINVAL, "svg chart: more than %d series in panel '%s'",
                       MR_SVG_MAX_SERIES, p->title);
    mr_svg_series *s = &p->series[p->n_series];
    s->x = malloc(sizeof(double) * (n ? n : 1));
    s->y = malloc(sizeof(double) * (n ? n : 1));
    if (!s->x || !s->y) {
        free(s->x);
        free(s->y);
        return mr_fail(MR_ENOMEM, "svg chart: out of memory");
    }
    snprintf(s->name, sizeof s->name, "%s", name);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(x[i]) || !isfinite(y[i]) || (p->log_x && x[i] <= 0)) continue;
        s->x[k] = x[i];
        s->y[k] = y[i];
        k++;
    }
    s->n = k;
    p->n_series++;
    return MR_OK;
}

void mr_svg_add_mark(mr_svg_panel *p, double x, const char *label)
{
    if (p->n_marks == MR_SVG_MAX_MARKS || !isfinite(x)) return;
    p->marks[p->n_marks++] = x;
    snprintf(p->mark_label, sizeof p->mark_label, "%s", label);
}

void mr_svg_free(mr_svg_chart *c)
{
    for (int i = 0; i < MR_SVG_MAX_PANELS; i++)
        for (int j = 0; j < c->panels[i].n_series; j++) {
            free(c->panels[i].series[j].x);
            free(c->panels[i].series[j].y);
        }
    memset(c, 0, sizeof *c);
}

/* ---- writing ---------------------------------------------------------------- */

static void put_text(FILE *fp, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '<': fputs("&lt;", fp); break;
        case '>': fputs("&gt;", fp); break;
        case '&': fputs("&amp;", fp); break;
        case '"': fputs("&quot;", fp); break;
        default: fputc(*s, fp);
        }
    }
}

/* A "nice" tick step (1, 2 or 5 · 10^k) giving about `want` ticks. */
static double nice_step(double span, int want)
{
    double raw = span / want, mag = pow(10.0, floor(log10(raw))), r = raw / mag;
    return (r < 1.5 ? 1.0 : r < 3.5 ? 2.0 : r < 7.5 ? 5.0 : 10.0) * mag;
}

static void fmt_tick(double v, char *buf, size_t cap)
{
    double a = fabs(v);
    if (a >= 1e6 || (a > 0 && a < 1e-2)) snprintf(buf, cap, "%.1e", v);
    else snprintf(buf, cap, "%g", v);
}

static void write_panel(FILE *fp, const mr_svg_panel *p, double ox, double oy)
{
    double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
    for (int j = 0; j < p->n_series; j++)
        for (size_t i = 0; i < p->series[j].n; i++) {
            double x = p->log_x ? log10(p->series[j].x[i]) : p->series[j].x[i];
            x0 = fmin(x0, x), x1 = fmax(x1, x);
            y0 = fmin(y0, p->series[j].y[i]), y1 = fmax(y1, p->series[j].y[i]);
        }
    const double pw = PANEL_W - MARGIN_L - MARGIN_R, ph = PANEL_H - MARGIN_T - MARGIN_B;
    const double left = ox + MARGIN_L, top = oy + MARGIN_T;
    fprintf(fp, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"14\" font-weight=\"bold\">", left,
            oy + 24);
    put_text(fp, p->title);
    fputs("</text>\n", fp);
    fprintf(fp, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" "
                "stroke=\"#444\"/>\n", left, top, pw, ph);
    if (!(x0 <= x1)) { /* no data */
        fprintf(fp, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"12\" fill=\"#888\">no data</text>\n",
                left + pw / 2 - 25, top + ph / 2);
        return;
    }
    if (y0 > 0 && y0 < 0.5 * y1) y0 = 0; /* start at 0 unless it hides the detail */
    if (x1 - x0 < 1e-12) x0 -= 0.5, x1 += 0.5;
    if (y1 - y0 < 1e-12) y0 -= 0.5, y1 += 0.5;
    /* log axes tick at whole decades */
    const double xs = p->log_x ? fmax(1.0, round(nice_step(x1 - x0, 6))) : nice_step(x1 - x0, 6);
    const double ys = nice_step(y1 - y0, 5);
    x0 = floor(x0 / xs) * xs, x1 = ceil(x1 / xs) * xs;
    y0 = floor(y0 / ys) * ys, y1 = ceil(y1 / ys) * ys;
#define PX(x) (left + ((x) - x0) / (x1 - x0) * pw)
#define PY(y) (top + ph - ((y) - y0) / (y1 - y0) * ph)
    char buf[32];
    for (double t = x0; t <= x1 + xs * 1e-9; t += xs) {
        fprintf(fp, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n",
                PX(t), top, PX(t), top + ph);
        fmt_tick(p->log_x ? pow(10.0, t) : t, buf, sizeof buf);
        fprintf(fp, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" text-anchor=\"middle\">%s</text>\n",
                PX(t), top + ph + 15, buf);
    }
    for (double t = y0; t <= y1 + ys * 1e-9; t += ys) {
        fprintf(fp, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n",
                left, PY(t), left + pw, PY(t));
        fmt_tick(t, buf, sizeof buf);
        fprintf(fp, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" text-anchor=\"end\">%s</text>\n",
                left - 6, PY(t) + 4, buf);
    }
    fprintf(fp, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"12\" text-anchor=\"middle\">", left + pw / 2,
            top + ph + 36);
    put_text(fp, p->x_label);
    if (p->log_x) fputs(" (log scale)", fp);
    fputs("</text>\n", fp);
    fprintf(fp, "<text transform=\"translate(%.1f,%.1f) rotate(-90)\" font-size=\"12\" "
                "text-anchor=\"middle\">", ox + 16, top + ph / 2);
    put_text(fp, p->y_label);
    fputs("</text>\n", fp);
    for (int m = 0; m < p->n_marks; m++) {
        double x = p->log_x ? log10(p->marks[m]) : p->marks[m];
        if (x < x0 || x > x1) continue;
        fprintf(fp, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#888\" "
                    "stroke-dasharray=\"4,3\"/>\n", PX(x), top, PX(x), top + ph);
    }
    for (int j = 0; j < p->n_series; j++) {
        const mr_svg_series *s = &p->series[j];
        fprintf(fp, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.8\" points=\"",
                colors[j]);
        for (size_t i = 0; i < s->n; i++)
            fprintf(fp, "%.1f,%.1f ", PX(p->log_x ? log10(s->x[i]) : s->x[i]), PY(s->y[i]));
        fputs("\"/>\n", fp);
        double ly = top + 14 + 16 * j;
        fprintf(fp, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" "
                    "stroke-width=\"3\"/>\n", left + pw - 150, ly - 4, left + pw - 130, ly - 4,
                colors[j]);
        fprintf(fp, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\">", left + pw - 125, ly);
        put_text(fp, s->name);
        fputs("</text>\n", fp);
    }
    if (p->n_marks)
        fprintf(fp, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\" fill=\"#666\">dashed: %s</text>\n",
                left + 4, top + ph - 6, p->mark_label);
#undef PX
#undef PY
}

mr_status mr_svg_write(const mr_svg_chart *c, const char *path)
{
    FILE *fp = fopen(path, "w");
    if (!fp) return mr_fail(MR_EIO, "%s: %s", path, strerror(errno));
    const double w = c->cols * PANEL_W, h = HEADER + c->rows * PANEL_H;
    fprintf(fp, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
                "viewBox=\"0 0 %.0f %.0f\" font-family=\"sans-serif\">\n"
                "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
                "<text x=\"16\" y=\"26\" font-size=\"16\" font-weight=\"bold\">", w, h, w, h);
    put_text(fp, c->title);
    fputs("</text>\n", fp);
    for (int r = 0; r < c->rows; r++)
        for (int k = 0; k < c->cols; k++)
            write_panel(fp, &c->panels[r * c->cols + k], k * PANEL_W, HEADER + r * PANEL_H);
    fputs("</svg>\n", fp);
    if (ferror(fp) || fclose(fp) != 0) return mr_fail(MR_EIO, "%s: write failed", path);
    return MR_OK;
}
