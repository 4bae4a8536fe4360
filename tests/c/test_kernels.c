/* Standalone test of the generated kernels (no Python): every kernel, both dtypes, both
 * layouts, against a straightforward double-precision two-pass computation written here.
 *
 *   cc -std=c99 -O2 [-fopenmp] -I generated tests/c/test_kernels.c generated/bnsym_*.c -lm
 *   ./a.out            (exit status 0 when every check passes)
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bnsym.h"

enum { F32 = 0, F64 = 1 };
enum { NCS = 0, NSC = 1 };

static int failures = 0;
static int checks = 0;

#include "rnd.h"

static int64_t idx(int layout, int64_t N, int64_t C, int64_t S, int64_t n, int64_t c, int64_t s)
{
    (void)N;
    return layout == NCS ? (n * C + c) * S + s : (n * S + s) * C + c;
}

/* Round through the kernel's dtype, so that the reference sees the same inputs. */
static void quantize(int dt, double *v, int64_t len)
{
    int64_t i;
    if (dt == F32)
        for (i = 0; i < len; ++i)
            v[i] = (double)(float)v[i];
}

static void *to_t(int dt, const double *v, int64_t len)
{
    int64_t i;
    void *out;
    if (v == NULL)
        return NULL;
    out = malloc((size_t)(len ? len : 1) * (dt == F32 ? sizeof(float) : sizeof(double)));
    for (i = 0; i < len; ++i) {
        if (dt == F32)
            ((float *)out)[i] = (float)v[i];
        else
            ((double *)out)[i] = v[i];
    }
    return out;
}

static void from_t(int dt, const void *t, double *v, int64_t len)
{
    int64_t i;
    if (t == NULL || v == NULL)
        return;
    for (i = 0; i < len; ++i)
        v[i] = dt == F32 ? (double)((const float *)t)[i] : ((const double *)t)[i];
}

static void expect_close(const char *what, const char *ctx, const double *got, const double *want, int64_t len,
                         double rtol, double atol)
{
    int64_t i;
    checks++;
    for (i = 0; i < len; ++i) {
        const double g = got[i], w = want[i];
        if ((isnan(w) && isnan(g)) || (isinf(w) && g == w))
            continue;
        if (!(fabs(g - w) <= atol + rtol * fabs(w))) {
            printf("FAIL %s %s: [%lld] got %.17g want %.17g\n", ctx, what, (long long)i, g, w);
            failures++;
            return;
        }
    }
}

static void expect_int(const char *what, const char *ctx, int got, int want)
{
    checks++;
    if (got != want) {
        printf("FAIL %s %s: got %d want %d\n", ctx, what, got, want);
        failures++;
    }
}

/* ---- reference (double, two passes) ---------------------------------------------------- */

static void ref_stats(int layout, int64_t N, int64_t C, int64_t S, const double *x, double *mean, double *var)
{
    int64_t n, c, s;
    const double m = (double)(N * S);
    for (c = 0; c < C; ++c) {
        double sum = 0.0, sq = 0.0;
        for (n = 0; n < N; ++n)
            for (s = 0; s < S; ++s)
                sum += x[idx(layout, N, C, S, n, c, s)];
        mean[c] = sum / m;
        for (n = 0; n < N; ++n)
            for (s = 0; s < S; ++s) {
                const double d = x[idx(layout, N, C, S, n, c, s)] - mean[c];
                sq += d * d;
            }
        var[c] = sq / m;
    }
}

/* ---- calls through the ABI --------------------------------------------------------------- */

static int call_fwd_train(int dt, int layout, int64_t N, int64_t C, int64_t S, const void *x, void *y,
                          const void *w, const void *b, void *rm, void *rv, void *sm, void *si, double eps,
                          double momentum, int skip, int nt)
{
    if (dt == F32 && layout == NCS)
        return bnsym_forward_train_f32_ncs(N, C, S, x, y, w, b, rm, rv, sm, si, eps, momentum, skip, nt);
    if (dt == F32)
        return bnsym_forward_train_f32_nsc(N, C, S, x, y, w, b, rm, rv, sm, si, eps, momentum, skip, nt);
    if (layout == NCS)
        return bnsym_forward_train_f64_ncs(N, C, S, x, y, w, b, rm, rv, sm, si, eps, momentum, skip, nt);
    return bnsym_forward_train_f64_nsc(N, C, S, x, y, w, b, rm, rv, sm, si, eps, momentum, skip, nt);
}

static int call_fwd_eval(int dt, int layout, int64_t N, int64_t C, int64_t S, const void *x, void *y,
                         const void *w, const void *b, const void *rm, const void *rv, double eps, int nt)
{
    if (dt == F32 && layout == NCS)
        return bnsym_forward_eval_f32_ncs(N, C, S, x, y, w, b, rm, rv, eps, nt);
    if (dt == F32)
        return bnsym_forward_eval_f32_nsc(N, C, S, x, y, w, b, rm, rv, eps, nt);
    if (layout == NCS)
        return bnsym_forward_eval_f64_ncs(N, C, S, x, y, w, b, rm, rv, eps, nt);
    return bnsym_forward_eval_f64_nsc(N, C, S, x, y, w, b, rm, rv, eps, nt);
}

static int call_bwd_train(int dt, int layout, int64_t N, int64_t C, int64_t S, const void *dy, const void *x,
                          const void *w, const void *sm, const void *si, void *dx, void *dw, void *db, int nt)
{
    if (dt == F32 && layout == NCS)
        return bnsym_backward_train_f32_ncs(N, C, S, dy, x, w, sm, si, dx, dw, db, nt);
    if (dt == F32)
        return bnsym_backward_train_f32_nsc(N, C, S, dy, x, w, sm, si, dx, dw, db, nt);
    if (layout == NCS)
        return bnsym_backward_train_f64_ncs(N, C, S, dy, x, w, sm, si, dx, dw, db, nt);
    return bnsym_backward_train_f64_nsc(N, C, S, dy, x, w, sm, si, dx, dw, db, nt);
}

static int call_bwd_eval(int dt, int layout, int64_t N, int64_t C, int64_t S, const void *dy, const void *x,
                         const void *w, const void *rm, const void *rv, void *dx, void *dw, void *db, double eps,
                         int nt)
{
    if (dt == F32 && layout == NCS)
        return bnsym_backward_eval_f32_ncs(N, C, S, dy, x, w, rm, rv, dx, dw, db, eps, nt);
    if (dt == F32)
        return bnsym_backward_eval_f32_nsc(N, C, S, dy, x, w, rm, rv, dx, dw, db, eps, nt);
    if (layout == NCS)
        return bnsym_backward_eval_f64_ncs(N, C, S, dy, x, w, rm, rv, dx, dw, db, eps, nt);
    return bnsym_backward_eval_f64_nsc(N, C, S, dy, x, w, rm, rv, dx, dw, db, eps, nt);
}

/* ---- one case ---------------------------------------------------------------------------- */

static void run_case_drift(int dt, int layout, int64_t N, int64_t C, int64_t S, double offset, double scale, int nt,
                           int use_affine, double drift)
{
    const int64_t E = N * C * S;
    const double m = (double)(N * S);
    const double eps = 1e-5, momentum = 0.1;
    const double rtol = dt == F32 ? 2e-5 : 1e-11;
    const double atol = dt == F32 ? 2e-5 : 1e-11;
    /* the element pass works in the array type: x - (T)mean carries the rounding of the mean,
     * about the resolution of the data themselves when the offset is large */
    const double yatol = 10 * atol + 4.0 * fabs(offset) * (dt == F32 ? 1.2e-7 : 2.3e-16);
    char ctx[160];
    double *x = calloc((size_t)E, sizeof(double)), *dy = calloc((size_t)E, sizeof(double));
    double *y = calloc((size_t)E, sizeof(double)), *yref = calloc((size_t)E, sizeof(double));
    double *w = calloc((size_t)C, sizeof(double)), *b = calloc((size_t)C, sizeof(double));
    double *rm = calloc((size_t)C, sizeof(double)), *rv = calloc((size_t)C, sizeof(double));
    double *mean = calloc((size_t)C, sizeof(double)), *var = calloc((size_t)C, sizeof(double));
    double *invstd = calloc((size_t)C, sizeof(double));
    double *v1 = calloc((size_t)C, sizeof(double)), *v2 = calloc((size_t)C, sizeof(double));
    double *v3 = calloc((size_t)C, sizeof(double)), *v4 = calloc((size_t)C, sizeof(double));
    double *sdy = calloc((size_t)C, sizeof(double)), *sdyx = calloc((size_t)C, sizeof(double));
    void *tx, *ty, *tdy, *tw, *tb, *trm, *trv, *tsm, *tsi, *tdw, *tdb;
    int64_t i, n, c, s;
    int rc;

    snprintf(ctx, sizeof ctx, "%s %s N=%lld C=%lld S=%lld off=%g drift=%g nt=%d affine=%d", dt == F32 ? "f32" : "f64",
             layout == NCS ? "ncs" : "nsc", (long long)N, (long long)C, (long long)S, offset, drift, nt, use_affine);
    for (i = 0; i < E; ++i) {
        x[i] = offset + scale * rnd();
        dy[i] = rnd();
    }
    /* a drift along the batch: the first values of a channel are far from its mean */
    for (n = 0; n < N; ++n)
        for (c = 0; c < C; ++c)
            for (s = 0; s < S; ++s)
                x[idx(layout, N, C, S, n, c, s)] += drift * (double)n;
    for (c = 0; c < C; ++c) {
        w[c] = 1.0 + 0.5 * rnd();
        b[c] = 0.25 * rnd();
        rm[c] = 0.5 * rnd();
        rv[c] = 1.0 + 0.5 * rnd();
    }
    quantize(dt, x, E);
    quantize(dt, dy, E);
    quantize(dt, w, C);
    quantize(dt, b, C);
    quantize(dt, rm, C);
    quantize(dt, rv, C);
    ref_stats(layout, N, C, S, x, mean, var);
    for (c = 0; c < C; ++c)
        invstd[c] = 1.0 / sqrt(var[c] + eps);

    /* forward_train */
    tx = to_t(dt, x, E);
    ty = to_t(dt, x, E);
    tw = use_affine ? to_t(dt, w, C) : NULL;
    tb = use_affine ? to_t(dt, b, C) : NULL;
    trm = to_t(dt, rm, C);
    trv = to_t(dt, rv, C);
    tsm = to_t(dt, rm, C);
    tsi = to_t(dt, rm, C);
    rc = call_fwd_train(dt, layout, N, C, S, tx, ty, tw, tb, trm, trv, tsm, tsi, eps, momentum, 1, nt);
    expect_int("forward_train status", ctx, rc, 0);
    for (n = 0; n < N; ++n)
        for (c = 0; c < C; ++c)
            for (s = 0; s < S; ++s) {
                const int64_t k = idx(layout, N, C, S, n, c, s);
                yref[k] = (x[k] - mean[c]) * invstd[c] * (use_affine ? w[c] : 1.0) + (use_affine ? b[c] : 0.0);
            }
    from_t(dt, ty, y, E);
    expect_close("forward_train y", ctx, y, yref, E, rtol * 10, yatol);
    from_t(dt, tsm, v1, C);
    expect_close("forward_train save_mean", ctx, v1, mean, C, rtol, atol * (1 + fabs(offset)));
    from_t(dt, tsi, v1, C);
    expect_close("forward_train save_invstd", ctx, v1, invstd, C, rtol * 10, atol);
    for (c = 0; c < C; ++c) {
        v3[c] = (1 - momentum) * rm[c] + momentum * mean[c];
        v4[c] = (1 - momentum) * rv[c] + momentum * var[c] * m / (m - 1);
    }
    from_t(dt, trm, v1, C);
    from_t(dt, trv, v2, C);
    expect_close("forward_train running_mean", ctx, v1, v3, C, rtol, atol * (1 + fabs(offset)));
    expect_close("forward_train running_var", ctx, v2, v4, C, rtol * 10, atol);

    /* in place (y aliases x), optional outputs NULL */
    {
        void *tz = to_t(dt, x, E);
        rc = call_fwd_train(dt, layout, N, C, S, tz, tz, tw, tb, NULL, NULL, NULL, NULL, eps, momentum, 0, nt);
        expect_int("forward_train in place status", ctx, rc, 0);
        from_t(dt, tz, y, E);
        expect_close("forward_train in place y", ctx, y, yref, E, rtol * 10, yatol);
        free(tz);
    }
    /* bitwise reproducible for a fixed thread count */
    {
        void *tz = to_t(dt, x, E);
        const size_t bytes = (size_t)E * (dt == F32 ? sizeof(float) : sizeof(double));
        rc = call_fwd_train(dt, layout, N, C, S, tx, tz, tw, tb, NULL, NULL, NULL, NULL, eps, momentum, 0, nt);
        checks++;
        if (memcmp(tz, ty, bytes) != 0) {
            printf("FAIL %s forward_train not reproducible\n", ctx);
            failures++;
        }
        free(tz);
    }
    /* skip_nonfinite: a NaN in channel 0 leaves the running statistics alone, returns 1 */
    {
        double *xn = calloc((size_t)E, sizeof(double));
        void *txn, *tz = to_t(dt, x, E), *trm2 = to_t(dt, rm, C), *trv2 = to_t(dt, rv, C);
        memcpy(xn, x, sizeof(double) * (size_t)E);
        xn[idx(layout, N, C, S, N - 1, 0, S - 1)] = NAN;
        txn = to_t(dt, xn, E);
        rc = call_fwd_train(dt, layout, N, C, S, txn, tz, tw, tb, trm2, trv2, NULL, NULL, eps, momentum, 1, nt);
        expect_int("forward_train skip status", ctx, rc, 1);
        from_t(dt, trm2, v1, C);
        from_t(dt, trv2, v2, C);
        expect_close("forward_train skip running_mean", ctx, v1, rm, C, 0.0, 0.0);
        expect_close("forward_train skip running_var", ctx, v2, rv, C, 0.0, 0.0);
        if (C > 1) { /* other channels are still normalized */
            from_t(dt, tz, y, E);
            checks++;
            if (fabs(y[idx(layout, N, C, S, 0, 1, 0)] - yref[idx(layout, N, C, S, 0, 1, 0)]) > 1e-3) {
                printf("FAIL %s forward_train skip: channel 1 not normalized\n", ctx);
                failures++;
            }
        }
        rc = call_fwd_train(dt, layout, N, C, S, txn, tz, tw, tb, trm2, trv2, NULL, NULL, eps, momentum, 0, nt);
        expect_int("forward_train no-skip status", ctx, rc, 0);
        from_t(dt, trm2, v1, C);
        checks++;
        if (!isnan(v1[0])) {
            printf("FAIL %s forward_train no-skip: running_mean[0] should be NaN\n", ctx);
            failures++;
        }
        free(xn);
        free(txn);
        free(tz);
        free(trm2);
        free(trv2);
    }

    /* forward_eval */
    rc = call_fwd_eval(dt, layout, N, C, S, tx, ty, tw, tb, trm, trv, eps, nt);
    expect_int("forward_eval status", ctx, rc, 0);
    from_t(dt, trm, v1, C);
    from_t(dt, trv, v2, C);
    for (n = 0; n < N; ++n)
        for (c = 0; c < C; ++c)
            for (s = 0; s < S; ++s) {
                const int64_t k = idx(layout, N, C, S, n, c, s);
                yref[k] = (x[k] - v1[c]) / sqrt(v2[c] + eps) * (use_affine ? w[c] : 1.0) + (use_affine ? b[c] : 0.0);
            }
    from_t(dt, ty, y, E);
    expect_close("forward_eval y", ctx, y, yref, E, rtol * 10, yatol);

    /* backward_train, with the reference statistics as save_mean / save_invstd */
    tdy = to_t(dt, dy, E);
    free(tsm);
    free(tsi);
    quantize(dt, mean, C);
    quantize(dt, invstd, C);
    tsm = to_t(dt, mean, C);
    tsi = to_t(dt, invstd, C);
    tdw = to_t(dt, w, C);
    tdb = to_t(dt, w, C);
    for (c = 0; c < C; ++c) {
        sdy[c] = 0.0;
        sdyx[c] = 0.0;
        for (n = 0; n < N; ++n)
            for (s = 0; s < S; ++s) {
                const int64_t k = idx(layout, N, C, S, n, c, s);
                sdy[c] += dy[k];
                sdyx[c] += dy[k] * (x[k] - mean[c]);
            }
    }
    for (n = 0; n < N; ++n)
        for (c = 0; c < C; ++c)
            for (s = 0; s < S; ++s) {
                const int64_t k = idx(layout, N, C, S, n, c, s);
                const double g = use_affine ? w[c] : 1.0;
                const double xhat = (x[k] - mean[c]) * invstd[c];
                yref[k] = g * invstd[c] / m * (m * dy[k] - sdy[c] - xhat * sdyx[c] * invstd[c]);
            }
    rc = call_bwd_train(dt, layout, N, C, S, tdy, tx, tw, tsm, tsi, ty, tdw, tdb, nt);
    expect_int("backward_train status", ctx, rc, 0);
    from_t(dt, ty, y, E);
    expect_close("backward_train grad_input", ctx, y, yref, E, rtol * 50, atol * 50);
    for (c = 0; c < C; ++c)
        v3[c] = sdyx[c] * invstd[c];
    from_t(dt, tdw, v1, C);
    from_t(dt, tdb, v2, C);
    expect_close("backward_train grad_weight", ctx, v1, v3, C, rtol * 10, atol * 10 * sqrt(m));
    expect_close("backward_train grad_bias", ctx, v2, sdy, C, rtol * 10, atol * 10 * sqrt(m));
    /* grad_input may alias grad_output; grad_weight/grad_bias NULL */
    {
        void *tz = to_t(dt, dy, E);
        rc = call_bwd_train(dt, layout, N, C, S, tz, tx, tw, tsm, tsi, tz, NULL, NULL, nt);
        expect_int("backward_train in place status", ctx, rc, 0);
        from_t(dt, tz, y, E);
        expect_close("backward_train in place grad_input", ctx, y, yref, E, rtol * 50, atol * 50);
        free(tz);
    }
    /* grad_input NULL */
    {
        void *tdw2 = to_t(dt, w, C);
        rc = call_bwd_train(dt, layout, N, C, S, tdy, tx, tw, tsm, tsi, NULL, tdw2, NULL, nt);
        expect_int("backward_train no dx status", ctx, rc, 0);
        from_t(dt, tdw2, v1, C);
        expect_close("backward_train no dx grad_weight", ctx, v1, v3, C, rtol * 10, atol * 10 * sqrt(m));
        free(tdw2);
    }

    /* backward_eval */
    from_t(dt, trm, v1, C);
    from_t(dt, trv, v2, C);
    for (c = 0; c < C; ++c) {
        sdy[c] = 0.0;
        sdyx[c] = 0.0;
        invstd[c] = 1.0 / sqrt(v2[c] + eps);
        for (n = 0; n < N; ++n)
            for (s = 0; s < S; ++s) {
                const int64_t k = idx(layout, N, C, S, n, c, s);
                sdy[c] += dy[k];
                sdyx[c] += dy[k] * (x[k] - v1[c]);
            }
        v3[c] = sdyx[c] * invstd[c];
    }
    for (n = 0; n < N; ++n)
        for (c = 0; c < C; ++c)
            for (s = 0; s < S; ++s) {
                const int64_t k = idx(layout, N, C, S, n, c, s);
                yref[k] = dy[k] * (use_affine ? w[c] : 1.0) * invstd[c];
            }
    rc = call_bwd_eval(dt, layout, N, C, S, tdy, tx, tw, trm, trv, ty, tdw, tdb, eps, nt);
    expect_int("backward_eval status", ctx, rc, 0);
    from_t(dt, ty, y, E);
    expect_close("backward_eval grad_input", ctx, y, yref, E, rtol * 10, atol * 10);
    from_t(dt, tdw, v1, C);
    from_t(dt, tdb, v2, C);
    expect_close("backward_eval grad_weight", ctx, v1, v3, C, rtol * 10, atol * 10 * sqrt(m) * (1 + fabs(offset)));
    expect_close("backward_eval grad_bias", ctx, v2, sdy, C, rtol * 10, atol * 10 * sqrt(m));

    free(x); free(dy); free(y); free(yref); free(w); free(b); free(rm); free(rv);
    free(mean); free(var); free(invstd); free(v1); free(v2); free(v3); free(v4); free(sdy); free(sdyx);
    free(tx); free(ty); free(tdy); free(tw); free(tb); free(trm); free(trv); free(tsm); free(tsi);
    free(tdw); free(tdb);
}

static void run_case(int dt, int layout, int64_t N, int64_t C, int64_t S, double offset, double scale, int nt,
                     int use_affine)
{
    run_case_drift(dt, layout, N, C, S, offset, scale, nt, use_affine, 0.0);
}

/* float32 values near 1e33: the statistics (variance ~1e66) and per-channel coefficients
 * (~1e-33) leave the float range; outputs of unit scale must still be right. */
static void run_huge(int layout, int nt)
{
    const int64_t N = 5, C = 3, S = 40, E = N * C * S;
    const double big = 1e33, eps = 1e-5;
    double *x = calloc((size_t)E, sizeof(double)), *dy = calloc((size_t)E, sizeof(double));
    double *ref = calloc((size_t)E, sizeof(double)), *got = calloc((size_t)E, sizeof(double));
    double mean[3], var[3], inv[3], sdy[3], sdyx[3];
    float *tx, *ty, *tdy, sm[3], si[3];
    char ctx[96];
    int64_t i, n, c, s;
    snprintf(ctx, sizeof ctx, "f32 huge %s nt=%d", layout == NCS ? "ncs" : "nsc", nt);
    for (i = 0; i < E; ++i) {
        x[i] = (double)(float)(big * rnd());
        dy[i] = (double)(float)rnd();
    }
    ref_stats(layout, N, C, S, x, mean, var);
    for (c = 0; c < C; ++c)
        inv[c] = 1.0 / sqrt(var[c] + eps);
    tx = to_t(F32, x, E);
    ty = to_t(F32, x, E);
    tdy = to_t(F32, dy, E);
    expect_int("huge forward status", ctx,
               call_fwd_train(F32, layout, N, C, S, tx, ty, NULL, NULL, NULL, NULL, sm, si, eps, 0.1, 0, nt), 0);
    for (n = 0; n < N; ++n)
        for (c = 0; c < C; ++c)
            for (s = 0; s < S; ++s) {
                const int64_t k = idx(layout, N, C, S, n, c, s);
                ref[k] = (x[k] - mean[c]) * inv[c];
            }
    from_t(F32, ty, got, E);
    expect_close("huge forward y", ctx, got, ref, E, 1e-5, 1e-5);
    for (c = 0; c < C; ++c) {
        got[c] = si[c];
        ref[c] = inv[c];
    }
    expect_close("huge forward save_invstd", ctx, got, ref, C, 1e-5, 0.0);
    /* backward with the double statistics rounded to float */
    for (c = 0; c < C; ++c) {
        sm[c] = (float)mean[c];
        si[c] = (float)inv[c];
        mean[c] = sm[c];
        inv[c] = si[c];
        sdy[c] = 0.0;
        sdyx[c] = 0.0;
        for (n = 0; n < N; ++n)
            for (s = 0; s < S; ++s) {
                const int64_t k = idx(layout, N, C, S, n, c, s);
                sdy[c] += dy[k];
                sdyx[c] += dy[k] * (x[k] - mean[c]) * inv[c];
            }
    }
    for (n = 0; n < N; ++n)
        for (c = 0; c < C; ++c)
            for (s = 0; s < S; ++s) {
                const int64_t k = idx(layout, N, C, S, n, c, s);
                const double xhat = (x[k] - mean[c]) * inv[c];
                ref[k] = inv[c] / (double)(N * S) * ((double)(N * S) * dy[k] - sdy[c] - xhat * sdyx[c]);
            }
    expect_int("huge backward status", ctx,
               call_bwd_train(F32, layout, N, C, S, tdy, tx, NULL, sm, si, ty, NULL, NULL, nt), 0);
    from_t(F32, ty, got, E);
    expect_close("huge backward grad_input", ctx, got, ref, E, 1e-4, 1e-4 * 1e-33);
    free(x); free(dy); free(ref); free(got); free(tx); free(ty); free(tdy);
}

#ifdef _OPENMP
#include <omp.h>
/* Kernels called by each thread of the caller's own OpenMP team (a one-thread kernel runs
 * without a team of its own): every thread's results are bitwise those of a call made outside
 * any team, and no thread waits for the others. */
static void run_in_caller_team(void)
{
    enum { N = 40, C = 6, S = 30, E = N * C * S, T = 3 };
    static float x[E], dy[E], ref_y[E], ref_gx[E], y[T][E], gx[T][E];
    float ref_sm[C], ref_si[C], ref_gw[C], ref_gb[C], sm[T][C], si[T][C], gw[T][C], gb[T][C];
    char ctx[64];
    int layout, t, i, nrun = 0;
    for (i = 0; i < E; ++i) {
        x[i] = (float)(3.0 + rnd());
        dy[i] = (float)rnd();
    }
    for (layout = NCS; layout <= NSC; ++layout) {
        snprintf(ctx, sizeof ctx, "f32 %s called from a team of %d", layout == NCS ? "ncs" : "nsc", (int)T);
        expect_int("caller-team reference forward", ctx,
                   call_fwd_train(F32, layout, N, C, S, x, ref_y, NULL, NULL, NULL, NULL, ref_sm, ref_si, 1e-5, 0.1,
                                  0, 1), 0);
        expect_int("caller-team reference backward", ctx,
                   call_bwd_train(F32, layout, N, C, S, dy, x, NULL, ref_sm, ref_si, ref_gx, ref_gw, ref_gb, 1), 0);
#pragma omp parallel num_threads(T)
        {
            const int k = omp_get_thread_num();
            if (k == 0)
                nrun = omp_get_num_threads();
            call_fwd_train(F32, layout, N, C, S, x, y[k], NULL, NULL, NULL, NULL, sm[k], si[k], 1e-5, 0.1, 0, 1);
            call_bwd_train(F32, layout, N, C, S, dy, x, NULL, sm[k], si[k], gx[k], gw[k], gb[k], 1);
        }
        for (t = 0; t < nrun; ++t) {
            expect_int("caller-team forward y bitwise", ctx, memcmp(y[t], ref_y, sizeof ref_y) == 0, 1);
            expect_int("caller-team forward save_invstd bitwise", ctx, memcmp(si[t], ref_si, sizeof ref_si) == 0, 1);
            expect_int("caller-team backward grad_input bitwise", ctx, memcmp(gx[t], ref_gx, sizeof ref_gx) == 0, 1);
            expect_int("caller-team backward grad_weight bitwise", ctx, memcmp(gw[t], ref_gw, sizeof ref_gw) == 0, 1);
        }
    }
}
#endif

int main(void)
{
    /* (N, C, S): m = 2, C = 1, S = 1 (rows), odd sizes, strips longer than a block, many
     * strips per block, enough work to use two threads with one channel. */
    static const int64_t shapes[][3] = {
        {2, 1, 1}, {1, 1, 2}, {2, 3, 1}, {1, 4, 2}, {5, 3, 7}, {4, 17, 1}, {3, 5, 33}, {7, 70, 3},
        {2, 2, 4100}, {64, 3, 70}, {300, 20, 1}, {33, 129, 1}, {1, 1, 70001}, {3, 2, 30001},
        {3, 150, 20}, {5, 2, 256}, {40, 3, 255}, {9, 1000, 3},
    };
    const int nshapes = (int)(sizeof shapes / sizeof shapes[0]);
    int dt, layout, k, nt;
    for (dt = F32; dt <= F64; ++dt)
        for (layout = NCS; layout <= NSC; ++layout)
            for (k = 0; k < nshapes; ++k)
                for (nt = 1; nt <= 2; ++nt) {
                    run_case(dt, layout, shapes[k][0], shapes[k][1], shapes[k][2], 0.0, 1.0, nt, 1);
                    if (k % 3 == 0)
                        run_case(dt, layout, shapes[k][0], shapes[k][1], shapes[k][2], 0.0, 1.0, nt, 0);
                }
    /* a large offset: the statistics must stay accurate (no E[x^2] - E[x]^2) */
    for (dt = F32; dt <= F64; ++dt)
        for (layout = NCS; layout <= NSC; ++layout) {
            run_case(dt, layout, 16, 3, 300, 1e4, 1.0, 1, 1);
            run_case(dt, layout, 100, 5, 1, 1e4, 1.0, 2, 1);
        }
    /* drifting batches: shifts far from the means must be recentered (both layouts) */
    for (dt = F32; dt <= F64; ++dt)
        for (layout = NCS; layout <= NSC; ++layout)
            for (nt = 1; nt <= 2; ++nt) {
                run_case_drift(dt, layout, 40, 3, 300, 0.0, 1.0, nt, 1, 0.5);
                run_case_drift(dt, layout, 200, 70, 1, 0.0, 1.0, nt, 1, 0.05);
                run_case_drift(dt, layout, 30, 4, 20, 0.0, 1.0, nt, 1, 1.0);
            }
    for (layout = NCS; layout <= NSC; ++layout)
        for (nt = 1; nt <= 2; ++nt)
            run_huge(layout, nt);
#ifdef _OPENMP
    run_in_caller_team();
#endif
    printf("%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
