/* normlab fast kernels: float32 normalization fused with the affine, forward and first-order backward (OpenMP).

   The math is core.py's (docs/backward.md), per statistic set of m values:
       forward   xhat = (x - mean) * rstd,  rstd = 1 / sqrt(var + eps),  y = w * xhat + b
       backward  g' = w * g,  dx = rstd * (g' - sum(g') / m - xhat * sum(g' * xhat) / m),
                 dw = sum over the sets sharing w of g * xhat,  db = the same of g
   Three memory layouts (normlab/fast/__init__.py picks one):
       ch   x is (A, C, B) contiguous, one set per c over (a, b)      BatchNorm on NCHW / (N, C, L)
       col  x is (R, C) contiguous, one set per column c              BatchNorm on channels_last / (N, C)
       rows x is (R, K) contiguous, one set per row r                 LayerNorm, GroupNorm, InstanceNorm
   ch works channel by channel so its second pass finds the channel in cache: the forward streams x once from memory.
   Statistics are one pass with double accumulators around a shift (the set's first value), so inputs like
   1e4 + N(0, 1) keep their digits; outputs are (x - mean) * scale + shift, never x * a + c, for the same reason.
   Weights w, b are NULL for no affine (rows also takes per-block or elementwise weights, see rows_fwd). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <omp.h>

typedef int64_t i64;

/* s1 += sum(p - k), s2 += sum((p - k)^2) */
static inline void acc_shift(const float *restrict p, i64 n, float k, double *s1, double *s2) {
    double a = 0.0, b = 0.0;
#pragma omp simd reduction(+ : a, b)
    for (i64 i = 0; i < n; i++) {
        double d = (double)(p[i] - k);
        a += d;
        b += d * d;
    }
    *s1 += a;
    *s2 += b;
}

/* s1 += sum(g), s2 += sum(g * (x - mu)) */
static inline void acc_grad(const float *restrict g, const float *restrict x, i64 n, float mu, double *s1,
                            double *s2) {
    double a = 0.0, b = 0.0;
#pragma omp simd reduction(+ : a, b)
    for (i64 i = 0; i < n; i++) {
        a += (double)g[i];
        b += (double)(g[i] * (x[i] - mu));
    }
    *s1 += a;
    *s2 += b;
}

static inline void affine_out(const float *restrict x, float *restrict y, i64 n, float mu, float sc, float sh) {
#pragma omp simd
    for (i64 i = 0; i < n; i++) y[i] = (x[i] - mu) * sc + sh;
}

/* dx = k1 * g + k2 * (x - mu) + k3 */
static inline void grad_out(const float *restrict g, const float *restrict x, float *restrict dx, i64 n, float mu,
                            float k1, float k2, float k3) {
#pragma omp simd
    for (i64 i = 0; i < n; i++) dx[i] = k1 * g[i] + (k2 * (x[i] - mu) + k3);
}

static inline void finish_stats(double s1, double s2, double m, float k, double eps, float *mean, float *var,
                                float *rstd) {
    double d = s1 / m, v = s2 / m - d * d;
    if (v < 0.0) v = 0.0; /* NaN stays NaN */
    *mean = (float)(k + d);
    *var = (float)v;
    *rstd = (float)(1.0 / sqrt(v + eps));
}

/* ------------------------------------------------------------------------------------------------ ch: (A, C, B) */
void ch_fwd(const float *x, float *y, i64 A, i64 C, i64 B, const float *w, const float *b, double eps, float *mean,
            float *var, float *rstd, int nt) {
    const double m = (double)A * (double)B;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (i64 c = 0; c < C; c++) {
        const float k = x[c * B];
        double s1 = 0.0, s2 = 0.0;
        for (i64 a = 0; a < A; a++) acc_shift(x + (a * C + c) * B, B, k, &s1, &s2);
        finish_stats(s1, s2, m, k, eps, mean + c, var + c, rstd + c);
        const float sc = w ? w[c] * rstd[c] : rstd[c], sh = b ? b[c] : 0.0f;
        for (i64 a = 0; a < A; a++) affine_out(x + (a * C + c) * B, y + (a * C + c) * B, B, mean[c], sc, sh);
    }
}

void ch_bwd(const float *g, const float *x, float *dx, i64 A, i64 C, i64 B, const float *mean, const float *rstd,
            const float *w, float *dw, float *db, int nt) {
    const double m = (double)A * (double)B;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (i64 c = 0; c < C; c++) {
        const float mu = mean[c];
        double sg = 0.0, sgc = 0.0;
        for (i64 a = 0; a < A; a++) acc_grad(g + (a * C + c) * B, x + (a * C + c) * B, B, mu, &sg, &sgc);
        const double r = rstd[c], wc = w ? w[c] : 1.0, sgx = sgc * r; /* sum(g * xhat) */
        if (dw) dw[c] = (float)sgx;
        if (db) db[c] = (float)sg;
        const float k1 = (float)(wc * r), k2 = (float)(-wc * r * r * sgx / m), k3 = (float)(-wc * r * sg / m);
        for (i64 a = 0; a < A; a++) {
            const i64 o = (a * C + c) * B;
            grad_out(g + o, x + o, dx + o, B, mu, k1, k2, k3);
        }
    }
}

/* ---------------------------------------------------------------------------------------------- col: (R, C) */
void col_fwd(const float *x, float *y, i64 R, i64 C, const float *w, const float *b, double eps, float *mean,
             float *var, float *rstd, int nt) {
    double *acc = calloc((size_t)(2 * nt * C), sizeof(double));
    float *sc = malloc(sizeof(float) * 2 * (size_t)C), *sh = sc + C;
    const double m = (double)R;
#pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num(), T = omp_get_num_threads();
        const i64 r0 = R * t / T, r1 = R * (t + 1) / T;
        double *restrict s1 = acc + 2 * t * C, *restrict s2 = s1 + C;
        for (i64 r = r0; r < r1; r++) {
            const float *restrict p = x + r * C;
#pragma omp simd
            for (i64 c = 0; c < C; c++) {
                double d = (double)(p[c] - x[c]);
                s1[c] += d;
                s2[c] += d * d;
            }
        }
#pragma omp barrier
#pragma omp for schedule(static)
        for (i64 c = 0; c < C; c++) {
            double a = 0.0, q = 0.0;
            for (int u = 0; u < T; u++) {
                a += acc[2 * u * C + c];
                q += acc[2 * u * C + C + c];
            }
            finish_stats(a, q, m, x[c], eps, mean + c, var + c, rstd + c);
            sc[c] = w ? w[c] * rstd[c] : rstd[c];
            sh[c] = b ? b[c] : 0.0f;
        }
        for (i64 r = r0; r < r1; r++) {
            const float *restrict p = x + r * C;
            float *restrict q = y + r * C;
#pragma omp simd
            for (i64 c = 0; c < C; c++) q[c] = (p[c] - mean[c]) * sc[c] + sh[c];
        }
    }
    free(acc);
    free(sc);
}

void col_bwd(const float *g, const float *x, float *dx, i64 R, i64 C, const float *mean, const float *rstd,
             const float *w, float *dw, float *db, int nt) {
    double *acc = calloc((size_t)(2 * nt * C), sizeof(double));
    float *k = malloc(sizeof(float) * 3 * (size_t)C);
    const double m = (double)R;
#pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num(), T = omp_get_num_threads();
        const i64 r0 = R * t / T, r1 = R * (t + 1) / T;
        double *restrict s1 = acc + 2 * t * C, *restrict s2 = s1 + C;
        for (i64 r = r0; r < r1; r++) {
            const float *restrict gp = g + r * C, *restrict xp = x + r * C;
#pragma omp simd
            for (i64 c = 0; c < C; c++) {
                s1[c] += (double)gp[c];
                s2[c] += (double)(gp[c] * (xp[c] - mean[c]));
            }
        }
#pragma omp barrier
#pragma omp for schedule(static)
        for (i64 c = 0; c < C; c++) {
            double sg = 0.0, sgc = 0.0;
            for (int u = 0; u < T; u++) {
                sg += acc[2 * u * C + c];
                sgc += acc[2 * u * C + C + c];
            }
            const double r = rstd[c], wc = w ? w[c] : 1.0, sgx = sgc * r;
            if (dw) dw[c] = (float)sgx;
            if (db) db[c] = (float)sg;
            k[c] = (float)(wc * r);
            k[C + c] = (float)(-wc * r * r * sgx / m);
            k[2 * C + c] = (float)(-wc * r * sg / m);
        }
        for (i64 r = r0; r < r1; r++) {
            const float *restrict gp = g + r * C, *restrict xp = x + r * C;
            float *restrict q = dx + r * C;
#pragma omp simd
            for (i64 c = 0; c < C; c++) q[c] = k[c] * gp[c] + (k[C + c] * (xp[c] - mean[c]) + k[2 * C + c]);
        }
    }
    free(acc);
    free(k);
}

/* --------------------------------------------------------------------------------------------- rows: (R, K)
   Affine weights: NULL (none); per block (nb > 0: row r holds nb blocks of d = K / nb values, block j of row r uses
   w[(r % period) * nb + j], GroupNorm / InstanceNorm); elementwise (nb == 0: value k uses w[k], LayerNorm). */
void rows_fwd(const float *x, float *y, i64 R, i64 K, const float *w, const float *b, i64 period, i64 nb,
              double eps, float *mean, float *var, float *rstd, int nt) {
#pragma omp parallel for num_threads(nt) schedule(static)
    for (i64 r = 0; r < R; r++) {
        const float *restrict p = x + r * K;
        float *restrict q = y + r * K;
        double s1 = 0.0, s2 = 0.0;
        acc_shift(p, K, p[0], &s1, &s2);
        finish_stats(s1, s2, (double)K, p[0], eps, mean + r, var + r, rstd + r);
        const float mu = mean[r], rs = rstd[r];
        if (!w) {
            affine_out(p, q, K, mu, rs, 0.0f);
        } else if (nb > 0) {
            const i64 d = K / nb, o = (r % period) * nb;
            for (i64 j = 0; j < nb; j++) affine_out(p + j * d, q + j * d, d, mu, w[o + j] * rs, b[o + j]);
        } else {
#pragma omp simd
            for (i64 i = 0; i < K; i++) q[i] = (p[i] - mu) * rs * w[i] + b[i];
        }
    }
}

/* part: scratch of R * nb floats (per block) or 2 * nt * K floats (elementwise), zeroed by the caller. */
void rows_bwd(const float *g, const float *x, float *dx, i64 R, i64 K, const float *mean, const float *rstd,
              const float *w, i64 period, i64 nb, float *dw, float *db, float *part, int nt) {
    const double m = (double)K;
#pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num();
        float *restrict tdw = part + 2 * t * K, *restrict tdb = tdw + K; /* elementwise only */
#pragma omp for schedule(static)
        for (i64 r = 0; r < R; r++) {
            const float *restrict gp = g + r * K, *restrict xp = x + r * K;
            float *restrict q = dx + r * K;
            const float mu = mean[r], rs = rstd[r];
            double sg = 0.0, sgc = 0.0; /* sum(g'), sum(g' * (x - mu)) with g' = w * g */
            if (!w) {
                acc_grad(gp, xp, K, mu, &sg, &sgc);
            } else if (nb > 0) {
                const i64 d = K / nb, o = (r % period) * nb;
                for (i64 j = 0; j < nb; j++) {
                    double a = 0.0, c = 0.0;
                    acc_grad(gp + j * d, xp + j * d, d, mu, &a, &c);
                    part[2 * (r * nb + j)] = (float)(c * rs);
                    part[2 * (r * nb + j) + 1] = (float)a;
                    sg += w[o + j] * a;
                    sgc += w[o + j] * c;
                }
            } else {
                double a = 0.0, c = 0.0;
#pragma omp simd reduction(+ : a, c)
                for (i64 i = 0; i < K; i++) {
                    const float gc = gp[i] * (xp[i] - mu);
                    a += (double)(w[i] * gp[i]);
                    c += (double)(w[i] * gc);
                    tdw[i] += gc * rs;
                    tdb[i] += gp[i];
                }
                sg = a;
                sgc = c;
            }
            const double sgx = sgc * rs;
            const float k2 = (float)(-(double)rs * rs * sgx / m), k3 = (float)(-(double)rs * sg / m);
            if (!w) {
                grad_out(gp, xp, q, K, mu, rs, k2, k3);
            } else if (nb > 0) {
                const i64 d = K / nb, o = (r % period) * nb;
                for (i64 j = 0; j < nb; j++) grad_out(gp + j * d, xp + j * d, q + j * d, d, mu, w[o + j] * rs, k2, k3);
            } else {
#pragma omp simd
                for (i64 i = 0; i < K; i++) q[i] = w[i] * rs * gp[i] + (k2 * (xp[i] - mu) + k3);
            }
        }
    }
    if (!w) return;
    if (nb > 0) { /* dw, db have period * nb entries: sum the per-row blocks that share a weight */
        for (i64 i = 0; i < period * nb; i++) dw[i] = db[i] = 0.0f;
        for (i64 r = 0; r < R; r++) {
            const i64 o = (r % period) * nb;
            for (i64 j = 0; j < nb; j++) {
                dw[o + j] += part[2 * (r * nb + j)];
                db[o + j] += part[2 * (r * nb + j) + 1];
            }
        }
    } else {
#pragma omp parallel for num_threads(nt) schedule(static)
        for (i64 i = 0; i < K; i++) {
            float a = 0.0f, c = 0.0f;
            for (int u = 0; u < nt; u++) {
                a += part[2 * u * K + i];
                c += part[2 * u * K + K + i];
            }
            dw[i] = a;
            db[i] = c;
        }
    }
}
