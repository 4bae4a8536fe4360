/* Prints a digest of every output of every kernel (both dtypes and layouts, odd shapes, outputs
 * at each alignment, in place and not, 1 and 3 threads). tests/test_stream.py builds it twice,
 * with -DBNSYM_NO_STREAM and with -DBNSYM_STREAM_BYTES=0 (every call streams its outputs), and
 * requires the same lines: streaming stores and the vector element pass change no bit.
 *
 *   cc -std=c99 -O2 -march=native [-fopenmp] -D... -I generated tests/c/stream_outputs.c generated/bnsym_*.c -lm
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bnsym.h"

#include "rnd.h"

static uint64_t digest(const void *p, size_t bytes) /* FNV-1a */
{
    const unsigned char *b = (const unsigned char *)p;
    uint64_t h = 14695981039346656037ULL;
    size_t i;
    for (i = 0; i < bytes; ++i) {
        h ^= b[i];
        h *= 1099511628211ULL;
    }
    return h;
}

#define ARGS int64_t N, int64_t C, int64_t S, int nsc, int off, int inplace, int nt
#define DEFINE(T, SFX)                                                                             \
    static void run_##SFX(ARGS)                                                                   \
    {                                                                                              \
        const int64_t n = N * C * S;                                                               \
        T *xb = (T *)malloc((size_t)(n + 8) * sizeof(T)), *yb = (T *)malloc((size_t)(n + 8) * sizeof(T)); \
        T *gb = (T *)malloc((size_t)(n + 8) * sizeof(T)), *pc = (T *)malloc((size_t)(10 * C) * sizeof(T)); \
        T *x = xb + off, *dy = gb + (off + 1) % 4, *y = inplace ? x : yb + (off + 3) % 8;          \
        T *gi = inplace ? dy : yb + off;                                                           \
        int64_t i;                                                                                 \
        int st;                                                                                    \
        for (i = 0; i < n; ++i) {                                                                  \
            x[i] = (T)(3.0 + rnd());                                                               \
            dy[i] = (T)rnd();                                                                      \
        }                                                                                          \
        for (i = 0; i < C; ++i) {                                                                  \
            pc[i] = (T)(1.0 + 0.5 * rnd());     /* weight */                                       \
            pc[C + i] = (T)(0.5 * rnd());       /* bias */                                         \
            pc[2 * C + i] = (T)(3.0 + 0.1 * rnd()); /* running_mean */                             \
            pc[3 * C + i] = (T)(1.0 + 0.5 * rnd()); /* running_var */                              \
        }                                                                                          \
        st = nsc ? bnsym_forward_train_##SFX##_nsc(N, C, S, x, y, pc, pc + C, pc + 2 * C, pc + 3 * C, \
                                                   pc + 4 * C, pc + 5 * C, 1e-5, 0.1, 0, nt)       \
                 : bnsym_forward_train_##SFX##_ncs(N, C, S, x, y, pc, pc + C, pc + 2 * C, pc + 3 * C, \
                                                   pc + 4 * C, pc + 5 * C, 1e-5, 0.1, 0, nt);      \
        printf("forward_train %s %d %016llx %016llx\n", #SFX, st,                                  \
               (unsigned long long)digest(y, (size_t)n * sizeof(T)),                               \
               (unsigned long long)digest(pc + 2 * C, (size_t)(4 * C) * sizeof(T)));               \
        if (inplace)                                                                               \
            for (i = 0; i < n; ++i)                                                                \
                x[i] = (T)(3.0 + rnd());                                                           \
        st = nsc ? bnsym_forward_eval_##SFX##_nsc(N, C, S, x, y, pc, pc + C, pc + 2 * C, pc + 3 * C, 1e-5, nt) \
                 : bnsym_forward_eval_##SFX##_ncs(N, C, S, x, y, pc, pc + C, pc + 2 * C, pc + 3 * C, 1e-5, nt); \
        printf("forward_eval %s %d %016llx\n", #SFX, st, (unsigned long long)digest(y, (size_t)n * sizeof(T))); \
        st = nsc ? bnsym_backward_train_##SFX##_nsc(N, C, S, dy, x, pc, pc + 4 * C, pc + 5 * C, gi, pc + 6 * C, \
                                                    pc + 7 * C, nt)                                \
                 : bnsym_backward_train_##SFX##_ncs(N, C, S, dy, x, pc, pc + 4 * C, pc + 5 * C, gi, pc + 6 * C, \
                                                    pc + 7 * C, nt);                               \
        printf("backward_train %s %d %016llx %016llx\n", #SFX, st,                                 \
               (unsigned long long)digest(gi, (size_t)n * sizeof(T)),                              \
               (unsigned long long)digest(pc + 6 * C, (size_t)(2 * C) * sizeof(T)));              \
        if (inplace)                                                                               \
            for (i = 0; i < n; ++i)                                                                \
                dy[i] = (T)rnd();                                                                  \
        st = nsc ? bnsym_backward_eval_##SFX##_nsc(N, C, S, dy, x, pc, pc + 2 * C, pc + 3 * C, gi, pc + 8 * C, \
                                                   pc + 9 * C, 1e-5, nt)                           \
                 : bnsym_backward_eval_##SFX##_ncs(N, C, S, dy, x, pc, pc + 2 * C, pc + 3 * C, gi, pc + 8 * C, \
                                                   pc + 9 * C, 1e-5, nt);                          \
        printf("backward_eval %s %d %016llx %016llx\n", #SFX, st,                                  \
               (unsigned long long)digest(gi, (size_t)n * sizeof(T)),                              \
               (unsigned long long)digest(pc + 8 * C, (size_t)(2 * C) * sizeof(T)));              \
        free(xb);                                                                                  \
        free(yb);                                                                                  \
        free(gb);                                                                                  \
        free(pc);                                                                                  \
    }
DEFINE(float, f32)
DEFINE(double, f64)

int main(void)
{
    /* N, C, S: rows and strips of every schedule (small, lanes, grouped short strips, long
     * strips, S == 1, C below and above a vector, lanes not a multiple of a vector) */
    static const int64_t shapes[][3] = {
        {2, 3, 1},   {3, 5, 37},  {2, 7, 1},    {4, 16, 17},  {2, 3, 300},  {5, 13, 9},
        {1, 70, 2},  {3, 64, 49}, {2, 6, 1000}, {40, 3, 5},   {33, 19, 1},  {9, 24, 7},
        {2, 5, 9000}, {64, 10, 4}, {200, 37, 1}, {12, 8, 64},
    };
    size_t k;
    int nsc, off, inplace, nt;
#if (defined(__GNUC__) || defined(__clang__)) && defined(__AVX__) && defined(__x86_64__)
    printf("stream-capable 1\n");
#else
    printf("stream-capable 0\n");
#endif
    for (k = 0; k < sizeof shapes / sizeof shapes[0]; ++k)
        for (nsc = 0; nsc < 2; ++nsc)
            for (off = 0; off < 4; ++off)
                for (inplace = 0; inplace < 2; ++inplace)
                    for (nt = 1; nt <= 3; nt += 2) {
                        printf("case %lld %lld %lld nsc=%d off=%d inplace=%d threads=%d\n",
                               (long long)shapes[k][0], (long long)shapes[k][1], (long long)shapes[k][2],
                               nsc, off, inplace, nt);
                        run_f32(shapes[k][0], shapes[k][1], shapes[k][2], nsc, off, inplace, nt);
                        run_f64(shapes[k][0], shapes[k][1], shapes[k][2], nsc, off, inplace, nt);
                    }
    return 0;
}
