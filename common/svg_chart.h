/* common/svg_chart.h — line charts as standalone SVG files, no dependencies.
 *
 * A chart is a grid of panels; each panel has a title, axis labels, linear
 * axes fitted to its data (or log-10 x when asked), tick labels, a legend,
 * and up to MR_SVG_MAX_SERIES polylines (step-free, points in order). The
 * output opens in any browser or image viewer:
 *
 *   mr_svg_chart c;
 *   mr_svg_init(&c, "moerun report", 2, 1);            // 2 panels in a row
 *   mr_svg_panel *p = mr_svg_panel_at(&c, 0);
 *   mr_svg_set_labels(p, "TTFT", "ms", "fraction of requests");
 *   mr_svg_add_series(p, "ttft", xs, ys, n);           // copies the points
 *   mr_svg_write(&c, "out.svg");                       // MR_EIO names the file
 *   mr_svg_free(&c);
 *
 * Text is XML-escaped. Non-finite points are skipped. Single-threaded.
 */
#ifndef MR_SVG_CHART_H
#define MR_SVG_CHART_H

#include <stdbool.h>
#include <stddef.h>

#include "status.h"

#define MR_SVG_MAX_SERIES 6
#define MR_SVG_MAX_PANELS 6
#define MR_SVG_MAX_MARKS 64

typedef struct mr_svg_series {
    char name[64];
    double *x, *y;
    size_t n;
} mr_svg_series;

typedef struct mr_svg_panel {
    char title[96], x_label[64], y_label[64];
    mr_svg_series series[MR_SVG_MAX_SERIES];
    int n_series;
    double marks[MR_SVG_MAX_MARKS];  /* vertical dashed lines at these x */
    char mark_label[32];
    int n_marks;
    bool log_x;
} mr_svg_panel;

typedef struct mr_svg_chart {
    char title[128];
    int cols, rows;
    mr_svg_panel panels[MR_SVG_MAX_PANELS];
} mr_svg_chart;

void mr_svg_init(mr_svg_chart *c, const char *title, int cols, int rows);
mr_svg_panel *mr_svg_panel_at(mr_svg_chart *c, int index); /* NULL when out of range */
void mr_svg_set_labels(mr_svg_panel *p, const char *title, const char *x_label,
                       const char *y_label);
mr_status mr_svg_add_series(mr_svg_panel *p, const char *name, const double *x, const double *y,
                            size_t n);
void mr_svg_add_mark(mr_svg_panel *p, double x, const char *label);
mr_status mr_svg_write(const mr_svg_chart *c, const char *path);
void mr_svg_free(mr_svg_chart *c);

#endif
