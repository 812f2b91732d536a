/* plot.c - a character canvas for the spectrum and rank-profile panes: braille dots (2 x 4 per
 * cell, U+2800..U+28FF) in a UTF-8 locale, one '*' / '.' mark per cell otherwise. */
#include "tui_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int tui_plot_init(struct tui_plot *p, int w, int h, int utf8)
{
    memset(p, 0, sizeof *p);
    if (w < 1 || h < 1)
        return -1;
    p->w = w;
    p->h = h;
    p->utf8 = utf8;
    p->dw = utf8 ? 2 * w : w;
    p->dh = utf8 ? 4 * h : h;
    for (int s = 0; s < PLOT_SERIES; s++)
        if (!(p->dots[s] = calloc((size_t)w * h, 1)))
            goto fail;
    if (!(p->hl = calloc((size_t)w * h, 1)))
        goto fail;
    return 0;
fail:
    tui_plot_free(p);
    return -1;
}

void tui_plot_free(struct tui_plot *p)
{
    for (int s = 0; s < PLOT_SERIES; s++)
        free(p->dots[s]);
    free(p->hl);
    memset(p, 0, sizeof *p);
}

/* Braille dot bit of (dx, dy) inside a cell, dx 0..1, dy 0..3 (Unicode's dot numbering). */
static const unsigned char braille_bit[4][2] = {
    {0x01, 0x08}, {0x02, 0x10}, {0x04, 0x20}, {0x40, 0x80}};

static void set_dot(struct tui_plot *p, int s, int px, int py)
{
    if (px < 0 || py < 0 || px >= p->dw || py >= p->dh)
        return;
    if (p->utf8)
        p->dots[s][(py / 4) * p->w + px / 2] |= braille_bit[py % 4][px % 2];
    else
        p->dots[s][py * p->w + px] = 1;
}

static int to_px(const struct tui_plot *p, double fx)
{
    if (!isfinite(fx))
        fx = 0;
    fx = fx < 0 ? 0 : fx > 1 ? 1 : fx;
    return (int)lround(fx * (p->dw - 1));
}

static int to_py(const struct tui_plot *p, double fy)
{
    if (!isfinite(fy))
        fy = 0;
    fy = fy < 0 ? 0 : fy > 1 ? 1 : fy;
    return (int)lround((1 - fy) * (p->dh - 1));
}

void tui_plot_line(struct tui_plot *p, int s, const double *x, const double *y, int n)
{
    if (s < 0 || s >= PLOT_SERIES || n < 1)
        return;
    int x0 = to_px(p, x[0]), y0 = to_py(p, y[0]);
    set_dot(p, s, x0, y0);
    for (int i = 1; i < n; i++) {
        int x1 = to_px(p, x[i]), y1 = to_py(p, y[i]);
        /* Bresenham from (x0, y0) to (x1, y1) */
        int dx = abs(x1 - x0), sx = x0 < x1 ? 1 : -1;
        int dy = -abs(y1 - y0), sy = y0 < y1 ? 1 : -1;
        int err = dx + dy, cx = x0, cy = y0;
        for (;;) {
            set_dot(p, s, cx, cy);
            if (cx == x1 && cy == y1)
                break;
            int e2 = 2 * err;
            if (e2 >= dy) {
                err += dy;
                cx += sx;
            }
            if (e2 <= dx) {
                err += dx;
                cy += sy;
            }
        }
        x0 = x1;
        y0 = y1;
    }
}

void tui_plot_hrule(struct tui_plot *p, double fy)
{
    int row = to_py(p, fy) / (p->utf8 ? 4 : 1);
    for (int c = 0; c < p->w; c++)
        p->hl[row * p->w + c] = 1;
}

void tui_plot_draw(const struct tui_plot *p, WINDOW *w, int y, int x, const attr_t *attr,
                   const char *ascii, attr_t rule_attr, const char *rule_glyph)
{
    for (int r = 0; r < p->h; r++) {
        wmove(w, y + r, x);
        for (int c = 0; c < p->w; c++) {
            int k = r * p->w + c, top = -1;
            unsigned bits = 0;
            for (int s = PLOT_SERIES - 1; s >= 0; s--)
                if (p->dots[s][k]) {
                    bits |= p->dots[s][k];
                    top = s;
                }
            if (top >= 0) {
                wattr_on(w, attr[top], NULL);
                if (p->utf8) {
                    wchar_t wc = (wchar_t)(0x2800 + bits);
                    waddnwstr(w, &wc, 1);
                } else {
                    waddch(w, (chtype)(unsigned char)ascii[top]);
                }
                wattr_off(w, attr[top], NULL);
            } else if (p->hl[k]) {
                wattr_on(w, rule_attr, NULL);
                waddstr(w, rule_glyph);
                wattr_off(w, rule_attr, NULL);
            } else {
                waddch(w, ' ');
            }
        }
    }
}
