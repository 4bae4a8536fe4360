/* Edge cases of the generated kernels, built with -fsanitize=address,undefined by
 * tests/test_sanitizers.py (with and without -fopenmp) and run without Python.
 *
 *   cc -std=c99 -g -fsanitize=address,undefined -fno-sanitize-recover=all \
 *      -I generated tests/sanitize_edges.c generated/bnsym_*.c -lm && ./a.out
 *
 * Every array is its own malloc of exactly the size the kernel may touch (N*C*S elements or
 * C channels), so AddressSanitizer reports a read or write one element past any of them.
 * Shapes: m = 2, C = 1, sizes that are not multiples of any vector width, wide rows, m = 1 in
 * evaluation; both dtypes, both layouts, 1 to 4 threads; every optional pointer NULL in turn;
 * outputs aliasing inputs exactly (y == x, grad_input == grad_output, grad_input == x), which
 * bnsym.h allows. Each result is also compared with a double-precision two-pass reference
 * written here (float32 1e-5, float64 1e-12 relative to the scale of the terms), and
 * skip_nonfinite's return code and untouched running statistics are checked.
 * Exit status 0 and "SANITIZE-EDGES OK <checks>" when everything passed.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bnsym.h"

enum { F32 = 0, F64 = 1 };
enum { NCS = 0, NSC = 1 };

static long checks = 0, failures = 0;
static const char *ctx = "";

#define RND_SEED 0x9E3779B97F4A7C15ULL
#include "c/rnd.h"

static int64_t at(int lay, int64_t C, int64_t S, int64_t n, int64_t c, int64_t s)
{
    return lay == NCS ? (n * C + c) * S + s : (n * S + s) * C + c;
}

/* ---- typed buffers: exact-size mallocs, values rounded through the dtype ---- */
static size_t esz(int dt) { return dt == F32 ? sizeof(float) : sizeof(double); }

static void *alloc(int dt, int64_t n)
{
    void *p = malloc((size_t)n * esz(dt));
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

static void *make(int dt, const double *v, int64_t n)
{
    int64_t i;
    void *p = alloc(dt, n);
    for (i = 0; i < n; ++i) {
        if (dt == F32)
            ((float *)p)[i] = (float)v[i];
        else
            ((double *)p)[i] = v[i];
    }
    return p;
}

static double get(int dt, const void *p, int64_t i)
{
    return dt == F32 ? (double)((const float *)p)[i] : ((const double *)p)[i];
}

static void quant(int dt, double *v, int64_t n)
{
    int64_t i;
    if (dt == F32)
        for (i = 0; i < n; ++i)
            v[i] = (double)(float)v[i];
}

static void check(int dt, const char *what, double got, double ref, double scale)
{
    double tol = (dt == F32 ? 1e-5 : 1e-12) * scale;
    ++checks;
    if (!(fabs(got - ref) <= tol) && !(isnan(got) && isnan(ref))) {
        if (failures < 30)
            fprintf(stderr, "MISMATCH %s: %s got %.17g ref %.17g tol %.3g\n", ctx, what, got, ref, tol);
        ++failures;
    }
}

static void check_rc(int rc, int want, const char *what)
{
    ++checks;
    if (rc != want) {
        fprintf(stderr, "MISMATCH %s: %s returned %d, expected %d\n", ctx, what, rc, want);
        ++failures;
    }
}

/* ---- kernel tables ---- */
typedef int (*ftrain_t)(int64_t, int64_t, int64_t, const void *, void *, const void *, const void *,
                        void *, void *, void *, void *, double, double, int, int);
typedef int (*feval_t)(int64_t, int64_t, int64_t, const void *, void *, const void *, const void *,
                       const void *, const void *, double, int);
typedef int (*btrain_t)(int64_t, int64_t, int64_t, const void *, const void *, const void *,
                        const void *, const void *, void *, void *, void *, int);
typedef int (*beval_t)(int64_t, int64_t, int64_t, const void *, const void *, const void *,
                       const void *, const void *, void *, void *, void *, double, int);

static ftrain_t FT[2][2] = {
    {(ftrain_t)bnsym_forward_train_f32_ncs, (ftrain_t)bnsym_forward_train_f32_nsc},
    {(ftrain_t)bnsym_forward_train_f64_ncs, (ftrain_t)bnsym_forward_train_f64_nsc}};
static feval_t FE[2][2] = {
    {(feval_t)bnsym_forward_eval_f32_ncs, (feval_t)bnsym_forward_eval_f32_nsc},
    {(feval_t)bnsym_forward_eval_f64_ncs, (feval_t)bnsym_forward_eval_f64_nsc}};
static btrain_t BT[2][2] = {
    {(btrain_t)bnsym_backward_train_f32_ncs, (btrain_t)bnsym_backward_train_f32_nsc},
    {(btrain_t)bnsym_backward_train_f64_ncs, (btrain_t)bnsym_backward_train_f64_nsc}};
static beval_t BE[2][2] = {
    {(beval_t)bnsym_backward_eval_f32_ncs, (beval_t)bnsym_backward_eval_f32_nsc},
    {(beval_t)bnsym_backward_eval_f64_ncs, (beval_t)bnsym_backward_eval_f64_nsc}};

/* ---- one shape, every variant ---- */
static void run_shape(int dt, int lay, int64_t N, int64_t C, int64_t S, int threads)
{
    const int64_t E = N * C * S, m = N * S;
    const double eps = 1e-5, mom = 0.1;
    double *xv = malloc((size_t)E * sizeof(double)), *dyv = malloc((size_t)E * sizeof(double));
    double *w = malloc((size_t)C * sizeof(double)), *b = malloc((size_t)C * sizeof(double));
    double *rm = malloc((size_t)C * sizeof(double)), *rv = malloc((size_t)C * sizeof(double));
    double *mean = malloc((size_t)C * sizeof(double)), *inv = malloc((size_t)C * sizeof(double));
    double *var = malloc((size_t)C * sizeof(double));
    int64_t n, c, s, i;
    int variant;
    char buf[160];

    for (c = 0; c < C; ++c) {
        double off = 3.0 * rnd(), sp = 0.5 + rnd() * 0.4;
        for (n = 0; n < N; ++n)
            for (s = 0; s < S; ++s) {
                xv[at(lay, C, S, n, c, s)] = off + sp * rnd();
                dyv[at(lay, C, S, n, c, s)] = rnd();
            }
        w[c] = 1.5 + rnd();
        b[c] = rnd();
        rm[c] = rnd();
        rv[c] = 1.2 + rnd();
    }
    quant(dt, xv, E), quant(dt, dyv, E), quant(dt, w, C), quant(dt, b, C), quant(dt, rm, C), quant(dt, rv, C);
    for (c = 0; c < C; ++c) { /* reference statistics, two passes in double */
        double s1 = 0, s2 = 0;
        for (n = 0; n < N; ++n)
            for (s = 0; s < S; ++s)
                s1 += xv[at(lay, C, S, n, c, s)];
        mean[c] = s1 / (double)m;
        for (n = 0; n < N; ++n)
            for (s = 0; s < S; ++s) {
                double d = xv[at(lay, C, S, n, c, s)] - mean[c];
                s2 += d * d;
            }
        var[c] = s2 / (double)m;
        inv[c] = 1.0 / sqrt(var[c] + eps);
    }

    /* ---------------- forward_train: 6 variants ---------------- */
    if (m > 1)
        for (variant = 0; variant < 6; ++variant) {
            int use_w = variant != 1, use_run = variant != 2, use_save = variant != 3;
            int inplace = variant == 4, use_rv_only = variant == 5;
            void *x = make(dt, xv, E);
            void *y = inplace ? x : alloc(dt, E);
            void *pw = use_w ? make(dt, w, C) : NULL, *pb = use_w ? make(dt, b, C) : NULL;
            void *prm = (use_run && !use_rv_only) ? make(dt, rm, C) : NULL;
            void *prv = use_run ? make(dt, rv, C) : NULL;
            void *psm = use_save ? alloc(dt, C) : NULL, *psi = use_save ? alloc(dt, C) : NULL;
            int rc;
            snprintf(buf, sizeof buf, "forward_train dt=%d lay=%d N=%lld C=%lld S=%lld thr=%d var=%d",
                     dt, lay, (long long)N, (long long)C, (long long)S, threads, variant);
            ctx = buf;
            rc = FT[dt][lay](N, C, S, x, y, pw, pb, prm, prv, psm, psi, eps, mom, 0, threads);
            check_rc(rc, 0, "forward_train");
            for (c = 0; c < C; ++c) {
                double g = use_w ? w[c] : 1.0, bb = use_w ? b[c] : 0.0, mx = 0;
                for (n = 0; n < N; ++n)
                    for (s = 0; s < S; ++s) {
                        double d = fabs(xv[at(lay, C, S, n, c, s)] - mean[c]);
                        mx = d > mx ? d : mx;
                    }
                for (n = 0; n < N; ++n)
                    for (s = 0; s < S; ++s) {
                        i = at(lay, C, S, n, c, s);
                        check(dt, "y", get(dt, y, i), (xv[i] - mean[c]) * inv[c] * g + bb,
                              fabs(g) * inv[c] * mx + fabs(bb) + 1e-300);
                    }
                if (psm) {
                    check(dt, "save_mean", get(dt, psm, c), mean[c], fabs(mean[c]) + sqrt(var[c]));
                    check(dt, "save_invstd", get(dt, psi, c), inv[c], inv[c]);
                }
                if (prm)
                    check(dt, "running_mean", get(dt, prm, c), (1 - mom) * rm[c] + mom * mean[c],
                          (1 - mom) * fabs(rm[c]) + mom * (fabs(mean[c]) + sqrt(var[c])));
                if (prv) {
                    double vu = var[c] * (double)m / (double)(m - 1);
                    check(dt, "running_var", get(dt, prv, c), (1 - mom) * rv[c] + mom * vu,
                          (1 - mom) * rv[c] + mom * vu);
                }
            }
            if (!inplace)
                free(y);
            free(x), free(pw), free(pb), free(prm), free(prv), free(psm), free(psi);
        }

    /* ---------------- forward_train, skip_nonfinite with a NaN in the last channel ------ */
    if (m > 1) {
        double *bad = malloc((size_t)E * sizeof(double));
        void *x, *y, *prm, *prv;
        int rc;
        memcpy(bad, xv, (size_t)E * sizeof(double));
        bad[at(lay, C, S, N - 1, C - 1, S - 1)] = NAN;
        x = make(dt, bad, E), y = alloc(dt, E), prm = make(dt, rm, C), prv = make(dt, rv, C);
        snprintf(buf, sizeof buf, "forward_train skip dt=%d lay=%d N=%lld C=%lld S=%lld", dt, lay,
                 (long long)N, (long long)C, (long long)S);
        ctx = buf;
        rc = FT[dt][lay](N, C, S, x, y, NULL, NULL, prm, prv, NULL, NULL, eps, mom, 1, threads);
        check_rc(rc, 1, "forward_train(skip_nonfinite=1, NaN)");
        for (c = 0; c < C; ++c) {
            check(dt, "running_mean untouched", get(dt, prm, c), rm[c], 0.0);
            check(dt, "running_var untouched", get(dt, prv, c), rv[c], 0.0);
        }
        ++checks;
        if (!isnan(get(dt, y, at(lay, C, S, 0, C - 1, 0)))) {
            fprintf(stderr, "MISMATCH %s: y of the NaN channel is not NaN\n", ctx);
            ++failures;
        }
        free(bad), free(x), free(y), free(prm), free(prv);
    }

    /* ---------------- forward_eval: 3 variants (all, no affine, in place) ---------------- */
    for (variant = 0; variant < 3; ++variant) {
        int use_w = variant != 1, inplace = variant == 2;
        void *x = make(dt, xv, E);
        void *y = inplace ? x : alloc(dt, E);
        void *pw = use_w ? make(dt, w, C) : NULL, *pb = use_w ? make(dt, b, C) : NULL;
        void *prm = make(dt, rm, C), *prv = make(dt, rv, C);
        int rc;
        snprintf(buf, sizeof buf, "forward_eval dt=%d lay=%d N=%lld C=%lld S=%lld thr=%d var=%d",
                 dt, lay, (long long)N, (long long)C, (long long)S, threads, variant);
        ctx = buf;
        rc = FE[dt][lay](N, C, S, x, y, pw, pb, prm, prv, eps, threads);
        check_rc(rc, 0, "forward_eval");
        for (c = 0; c < C; ++c) {
            double g = use_w ? w[c] : 1.0, bb = use_w ? b[c] : 0.0, ir = 1.0 / sqrt(rv[c] + eps), mx = 0;
            for (n = 0; n < N; ++n)
                for (s = 0; s < S; ++s) {
                    double d = fabs(xv[at(lay, C, S, n, c, s)] - rm[c]);
                    mx = d > mx ? d : mx;
                }
            for (n = 0; n < N; ++n)
                for (s = 0; s < S; ++s) {
                    i = at(lay, C, S, n, c, s);
                    check(dt, "y(eval)", get(dt, y, i), (xv[i] - rm[c]) * ir * g + bb,
                          fabs(g) * ir * mx + fabs(bb) + 1e-300);
                }
        }
        if (!inplace)
            free(y);
        free(x), free(pw), free(pb), free(prm), free(prv);
    }

    /* ---------------- backward (train, eval): 6 variants each ---------------- */
    for (variant = 0; variant < 12; ++variant) {
        int train = variant < 6, v = variant % 6;
        int want_gi = v != 1, want_gw = v != 2, want_gb = v != 3, use_w = v != 4;
        int alias_dy = v == 5 && (variant & 1), alias_x = v == 5 && !(variant & 1);
        void *x, *dy, *pw, *pa, *pb2, *gi, *gw, *gb;
        double *sa = malloc((size_t)C * sizeof(double)), *sb = malloc((size_t)C * sizeof(double));
        int rc;
        if (train && m < 2) {
            free(sa), free(sb);
            continue;
        }
        for (c = 0; c < C; ++c) {
            sa[c] = train ? mean[c] : rm[c];
            sb[c] = train ? inv[c] : rv[c];
        }
        quant(dt, sa, C), quant(dt, sb, C);
        x = make(dt, xv, E), dy = make(dt, dyv, E);
        pw = use_w ? make(dt, w, C) : NULL;
        pa = make(dt, sa, C), pb2 = make(dt, sb, C);
        gi = want_gi ? (alias_dy ? dy : alias_x ? x : alloc(dt, E)) : NULL;
        gw = want_gw ? alloc(dt, C) : NULL;
        gb = want_gb ? alloc(dt, C) : NULL;
        snprintf(buf, sizeof buf, "backward_%s dt=%d lay=%d N=%lld C=%lld S=%lld thr=%d var=%d",
                 train ? "train" : "eval", dt, lay, (long long)N, (long long)C, (long long)S,
                 threads, v);
        ctx = buf;
        if (train)
            rc = BT[dt][lay](N, C, S, dy, x, pw, pa, pb2, gi, gw, gb, threads);
        else
            rc = BE[dt][lay](N, C, S, dy, x, pw, pa, pb2, gi, gw, gb, eps, threads);
        check_rc(rc, 0, train ? "backward_train" : "backward_eval");
        for (c = 0; c < C; ++c) {
            double g = use_w ? w[c] : 1.0, iv = train ? sb[c] : 1.0 / sqrt(sb[c] + eps);
            double sdy = 0, sdx = 0, adx = 0, ady = 0, mdy = 0, mxh = 0;
            for (n = 0; n < N; ++n)
                for (s = 0; s < S; ++s) {
                    double xh, d;
                    i = at(lay, C, S, n, c, s);
                    xh = (xv[i] - sa[c]) * iv, d = dyv[i];
                    sdy += d, sdx += d * xh, adx += fabs(d * xh), ady += fabs(d);
                    mdy = fabs(d) > mdy ? fabs(d) : mdy;
                    mxh = fabs(xh) > mxh ? fabs(xh) : mxh;
                }
            if (gw)
                check(dt, "grad_weight", get(dt, gw, c), sdx, adx + 1e-300);
            if (gb)
                check(dt, "grad_bias", get(dt, gb, c), sdy, ady + 1e-300);
            if (gi)
                for (n = 0; n < N; ++n)
                    for (s = 0; s < S; ++s) {
                        double ref, xh;
                        i = at(lay, C, S, n, c, s);
                        xh = (xv[i] - sa[c]) * iv;
                        ref = train ? g * iv * (dyv[i] - sdy / (double)m - xh * sdx / (double)m)
                                    : g * iv * dyv[i];
                        check(dt, "grad_input", get(dt, gi, i), ref,
                              fabs(g) * iv * (mdy + ady / (double)m + mxh * adx / (double)m) + 1e-300);
                    }
        }
        if (gi && gi != dy && gi != x)
            free(gi);
        free(x), free(dy), free(pw), free(pa), free(pb2), free(gw), free(gb), free(sa), free(sb);
    }
    free(xv), free(dyv), free(w), free(b), free(rm), free(rv), free(mean), free(inv), free(var);
}

int main(void)
{
    /* N, C, S */
    static const int64_t shapes[][3] = {
        {2, 1, 1}, {1, 1, 2}, {1, 3, 2}, {3, 1, 5}, {1, 2, 17}, {2, 3, 31}, {5, 7, 33},
        {1, 1, 1000}, {2, 65, 3}, {4, 16, 16}, {17, 3, 1}, {1, 130, 1}, {3, 5, 67},
        {2, 129, 2}, {1, 4, 1}, {8, 3, 300}, {2, 200, 9}, {33, 1, 1}, {1, 1, 4099},
    };
    static const int threads[] = {1, 2, 4};
    size_t k;
    int dt, lay, t;
    for (k = 0; k < sizeof shapes / sizeof shapes[0]; ++k)
        for (dt = 0; dt < 2; ++dt)
            for (lay = 0; lay < 2; ++lay)
                for (t = 0; t < 3; ++t)
                    run_shape(dt, lay, shapes[k][0], shapes[k][1], shapes[k][2], threads[t]);
    if (failures) {
        fprintf(stderr, "SANITIZE-EDGES FAILED %ld of %ld checks\n", failures, checks);
        return 1;
    }
    printf("SANITIZE-EDGES OK %ld checks\n", checks);
    return 0;
}
