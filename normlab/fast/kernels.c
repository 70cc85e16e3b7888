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
   Statistics are one pass around a shift (the set's first value), summed in float within chunks of CHUNK values and
   in double across chunks, so inputs like 1e4 + N(0, 1) keep their digits; outputs are (x - mean) * scale + shift,
   never x * a + c, for the same reason.
   Weights w, b are NULL for no affine (rows also takes per-block or elementwise weights, see rows_fwd). */
#include <math.h>
#include <stdint.h>
#include <omp.h>

typedef int64_t i64;

#define CHUNK 512
/* s1 += sum(p - k), s2 += sum((p - k)^2): float lanes within a chunk, double across chunks */
static inline void acc_shift(const float *restrict p, i64 n, float k, double *s1, double *s2) {
    for (i64 i0 = 0; i0 < n; i0 += CHUNK) {
        const i64 e = n - i0 < CHUNK ? n : i0 + CHUNK;
        float a = 0.0f, b = 0.0f;
#pragma omp simd reduction(+ : a, b)
        for (i64 i = i0; i < e; i++) {
            float d = p[i] - k;
            a += d;
            b += d * d;
        }
        *s1 += a;
        *s2 += b;
    }
}

/* s1 += sum(g), s2 += sum(g * (x - mu)) */
static inline void acc_grad(const float *restrict g, const float *restrict x, i64 n, float mu, double *s1,
                            double *s2) {
    for (i64 i0 = 0; i0 < n; i0 += CHUNK) {
        const i64 e = n - i0 < CHUNK ? n : i0 + CHUNK;
        float a = 0.0f, b = 0.0f;
#pragma omp simd reduction(+ : a, b)
        for (i64 i = i0; i < e; i++) {
            a += g[i];
            b += g[i] * (x[i] - mu);
        }
        *s1 += a;
        *s2 += b;
    }
}

/* The ch kernels read a channel as A chunks of B values, C * B apart: the hardware prefetcher loses the stream at
   every jump, so prefetch the chunk about PREFETCH bytes ahead (measured: 2x on (128, 256, 8, 8)). */
#define PREFETCH 8192
static inline i64 ahead(i64 B) { return B * 4 >= PREFETCH ? 1 : PREFETCH / (B * 4); }
static inline void prefetch(const float *p, i64 n) {
    for (i64 i = 0; i < n; i += 16) __builtin_prefetch(p + i, 0, 3);
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

static void colx_fwd(const float *x, float *y, i64 R, i64 C, i64 B, const float *w, const float *b, double eps,
                     float *mean, float *var, float *rstd, void *scratch, int nt);
static void colx_bwd(const float *g, const float *x, float *dx, i64 R, i64 C, i64 B, const float *mean,
                     const float *rstd, const float *w, float *dw, float *db, void *scratch, int nt);

/* ------------------------------------------------------------------------------------------------ ch: (A, C, B)
   Planes of fewer than SMALL_PLANE values (and rows of at most MAX_ROW) go to colx instead. */
#define SMALL_PLANE 256
#define MAX_ROW (1 << 16)

/* Bytes of scratch a call needs (the caller allocates it): col (kind 1) and ch with small planes (kind 0). */
i64 scratch_bytes(int kind, i64 C, i64 B, int nt) {
    if (kind == 0 && !(B < SMALL_PLANE && C * B <= MAX_ROW)) return 0;
    const i64 K = kind == 0 ? C * B : C;
    return 2 * nt * K * (i64)sizeof(double) + (4 + 2 * nt) * K * (i64)sizeof(float);
}
void ch_fwd(const float *x, float *y, i64 A, i64 C, i64 B, const float *w, const float *b, double eps, float *mean,
            float *var, float *rstd, void *scratch, int nt) {
    if (B < SMALL_PLANE && C * B <= MAX_ROW) {
        colx_fwd(x, y, A, C, B, w, b, eps, mean, var, rstd, scratch, nt);
        return;
    }
    const double m = (double)A * (double)B;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (i64 c = 0; c < C; c++) {
        const float k = x[c * B];
        double s1 = 0.0, s2 = 0.0;
        const i64 d = ahead(B);
        for (i64 a = 0; a < A; a++) {
            if (a + d < A) prefetch(x + ((a + d) * C + c) * B, B);
            acc_shift(x + (a * C + c) * B, B, k, &s1, &s2);
        }
        finish_stats(s1, s2, m, k, eps, mean + c, var + c, rstd + c);
        const float sc = w ? w[c] * rstd[c] : rstd[c], sh = b ? b[c] : 0.0f;
        for (i64 a = 0; a < A; a++) affine_out(x + (a * C + c) * B, y + (a * C + c) * B, B, mean[c], sc, sh);
    }
}

void ch_bwd(const float *g, const float *x, float *dx, i64 A, i64 C, i64 B, const float *mean, const float *rstd,
            const float *w, float *dw, float *db, void *scratch, int nt) {
    if (B < SMALL_PLANE && C * B <= MAX_ROW) {
        colx_bwd(g, x, dx, A, C, B, mean, rstd, w, dw, db, scratch, nt);
        return;
    }
    const double m = (double)A * (double)B;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (i64 c = 0; c < C; c++) {
        const float mu = mean[c];
        double sg = 0.0, sgc = 0.0;
        const i64 d = ahead(B);
        for (i64 a = 0; a < A; a++) {
            if (a + d < A) {
                prefetch(g + ((a + d) * C + c) * B, B);
                prefetch(x + ((a + d) * C + c) * B, B);
            }
            acc_grad(g + (a * C + c) * B, x + (a * C + c) * B, B, mu, &sg, &sgc);
        }
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

/* ---------------------------------------------------------------------------------------------- col: (R, C)
   Rows go in blocks of RB: float sums over the block (four rows per accumulator update), then double. */
#define RB 64

/* s1[c] += sum over rows r0..r1 of (x[r, c] - k[c]), s2[c] of its square; fa, fb: C floats of scratch */
static void col_moments(const float *restrict x, i64 r0, i64 r1, i64 C, const float *restrict k, float *restrict fa,
                        float *restrict fb, double *restrict s1, double *restrict s2) {
    for (i64 b0 = r0; b0 < r1; b0 += RB) {
        const i64 b1 = r1 - b0 < RB ? r1 : b0 + RB;
        for (i64 c = 0; c < C; c++) fa[c] = fb[c] = 0.0f;
        i64 r = b0;
        for (; r + 4 <= b1; r += 4) {
            const float *restrict p = x + r * C;
#pragma omp simd
            for (i64 c = 0; c < C; c++) {
                const float d0 = p[c] - k[c], d1 = p[C + c] - k[c], d2 = p[2 * C + c] - k[c], d3 = p[3 * C + c] - k[c];
                fa[c] += (d0 + d1) + (d2 + d3);
                fb[c] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
            }
        }
        for (; r < b1; r++) {
            const float *restrict p = x + r * C;
#pragma omp simd
            for (i64 c = 0; c < C; c++) {
                const float d = p[c] - k[c];
                fa[c] += d;
                fb[c] += d * d;
            }
        }
        for (i64 c = 0; c < C; c++) {
            s1[c] += fa[c];
            s2[c] += fb[c];
        }
    }
}

/* s1[c] += sum of g[r, c], s2[c] += sum of g[r, c] * (x[r, c] - mu[c]) over rows r0..r1 */
static void col_grad_sums(const float *restrict g, const float *restrict x, i64 r0, i64 r1, i64 C,
                          const float *restrict mu, float *restrict fa, float *restrict fb, double *restrict s1,
                          double *restrict s2) {
    for (i64 b0 = r0; b0 < r1; b0 += RB) {
        const i64 b1 = r1 - b0 < RB ? r1 : b0 + RB;
        for (i64 c = 0; c < C; c++) fa[c] = fb[c] = 0.0f;
        i64 r = b0;
        for (; r + 4 <= b1; r += 4) {
            const float *restrict gp = g + r * C, *restrict xp = x + r * C;
#pragma omp simd
            for (i64 c = 0; c < C; c++) {
                fa[c] += (gp[c] + gp[C + c]) + (gp[2 * C + c] + gp[3 * C + c]);
                fb[c] += (gp[c] * (xp[c] - mu[c]) + gp[C + c] * (xp[C + c] - mu[c])) +
                         (gp[2 * C + c] * (xp[2 * C + c] - mu[c]) + gp[3 * C + c] * (xp[3 * C + c] - mu[c]));
            }
        }
        for (; r < b1; r++) {
            const float *restrict gp = g + r * C, *restrict xp = x + r * C;
#pragma omp simd
            for (i64 c = 0; c < C; c++) {
                fa[c] += gp[c];
                fb[c] += gp[c] * (xp[c] - mu[c]);
            }
        }
        for (i64 c = 0; c < C; c++) {
            s1[c] += fa[c];
            s2[c] += fb[c];
        }
    }
}

/* col on (R, K) with K = C * B: column j belongs to channel j / B (B = 1: channels_last; B > 1: NCHW with small
   planes, where streaming whole rows beats the ch kernels' short strided chunks). */
static void colx_fwd(const float *x, float *y, i64 R, i64 C, i64 B, const float *w, const float *b, double eps,
                     float *mean, float *var, float *rstd, void *scratch, int nt) {
    const i64 K = C * B;
    double *acc = scratch;
    float *f = (float *)(acc + 2 * nt * K);
    for (i64 j = 0; j < 2 * nt * K; j++) acc[j] = 0.0;
    float *ks = f, *mu = f + K, *sc = f + 2 * K, *sh = f + 3 * K; /* per column: shift, mean, scale, shift out */
    const double m = (double)R * (double)B;
    for (i64 j = 0; j < K; j++) ks[j] = x[j / B * B];
#pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num(), T = omp_get_num_threads();
        const i64 r0 = R * t / T, r1 = R * (t + 1) / T;
        col_moments(x, r0, r1, K, ks, f + (4 + 2 * t) * K, f + (5 + 2 * t) * K, acc + 2 * t * K, acc + (2 * t + 1) * K);
#pragma omp barrier
#pragma omp for schedule(static)
        for (i64 c = 0; c < C; c++) {
            double a = 0.0, q = 0.0;
            for (int u = 0; u < T; u++)
                for (i64 j = c * B; j < (c + 1) * B; j++) {
                    a += acc[2 * u * K + j];
                    q += acc[2 * u * K + K + j];
                }
            finish_stats(a, q, m, ks[c * B], eps, mean + c, var + c, rstd + c);
            for (i64 j = c * B; j < (c + 1) * B; j++) {
                mu[j] = mean[c];
                sc[j] = w ? w[c] * rstd[c] : rstd[c];
                sh[j] = b ? b[c] : 0.0f;
            }
        }
        for (i64 r = r0; r < r1; r++) {
            const float *restrict p = x + r * K;
            float *restrict q = y + r * K;
#pragma omp simd
            for (i64 j = 0; j < K; j++) q[j] = (p[j] - mu[j]) * sc[j] + sh[j];
        }
    }
}

static void colx_bwd(const float *g, const float *x, float *dx, i64 R, i64 C, i64 B, const float *mean,
                     const float *rstd, const float *w, float *dw, float *db, void *scratch, int nt) {
    const i64 K = C * B;
    double *acc = scratch;
    float *f = (float *)(acc + 2 * nt * K);
    for (i64 j = 0; j < 2 * nt * K; j++) acc[j] = 0.0;
    float *mu = f, *k1 = f + K, *k2 = f + 2 * K, *k3 = f + 3 * K;
    const double m = (double)R * (double)B;
    for (i64 j = 0; j < K; j++) mu[j] = mean[j / B];
#pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num(), T = omp_get_num_threads();
        const i64 r0 = R * t / T, r1 = R * (t + 1) / T;
        col_grad_sums(g, x, r0, r1, K, mu, f + (4 + 2 * t) * K, f + (5 + 2 * t) * K, acc + 2 * t * K,
                      acc + (2 * t + 1) * K);
#pragma omp barrier
#pragma omp for schedule(static)
        for (i64 c = 0; c < C; c++) {
            double sg = 0.0, sgc = 0.0;
            for (int u = 0; u < T; u++)
                for (i64 j = c * B; j < (c + 1) * B; j++) {
                    sg += acc[2 * u * K + j];
                    sgc += acc[2 * u * K + K + j];
                }
            const double r = rstd[c], wc = w ? w[c] : 1.0, sgx = sgc * r;
            if (dw) dw[c] = (float)sgx;
            if (db) db[c] = (float)sg;
            for (i64 j = c * B; j < (c + 1) * B; j++) {
                k1[j] = (float)(wc * r);
                k2[j] = (float)(-wc * r * r * sgx / m);
                k3[j] = (float)(-wc * r * sg / m);
            }
        }
        for (i64 r = r0; r < r1; r++) {
            const float *restrict gp = g + r * K, *restrict xp = x + r * K;
            float *restrict q = dx + r * K;
#pragma omp simd
            for (i64 j = 0; j < K; j++) q[j] = k1[j] * gp[j] + (k2[j] * (xp[j] - mu[j]) + k3[j]);
        }
    }
}

void col_fwd(const float *x, float *y, i64 R, i64 C, const float *w, const float *b, double eps, float *mean,
             float *var, float *rstd, void *scratch, int nt) {
    colx_fwd(x, y, R, C, 1, w, b, eps, mean, var, rstd, scratch, nt);
}

void col_bwd(const float *g, const float *x, float *dx, i64 R, i64 C, const float *mean, const float *rstd,
             const float *w, float *dw, float *db, void *scratch, int nt) {
    colx_bwd(g, x, dx, R, C, 1, mean, rstd, w, dw, db, scratch, nt);
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

/* part: scratch of 2 * R * nb floats (per block) or 2 * nt * K floats (elementwise). */
void rows_bwd(const float *g, const float *x, float *dx, i64 R, i64 K, const float *mean, const float *rstd,
              const float *w, i64 period, i64 nb, float *dw, float *db, float *part, int nt) {
    const double m = (double)K;
#pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num();
        float *restrict tdw = part + 2 * t * K, *restrict tdb = tdw + K; /* elementwise only */
        if (w && nb == 0)
            for (i64 i = 0; i < 2 * K; i++) tdw[i] = 0.0f;
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
                for (i64 i0 = 0; i0 < K; i0 += CHUNK) {
                    const i64 e = K - i0 < CHUNK ? K : i0 + CHUNK;
                    float a = 0.0f, c = 0.0f;
#pragma omp simd reduction(+ : a, c)
                    for (i64 i = i0; i < e; i++) {
                        const float wg = w[i] * gp[i];
                        a += wg;
                        c += wg * (xp[i] - mu);
                    }
                    sg += a;
                    sgc += c;
                }
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
                for (i64 i = 0; i < K; i++) { /* dw, db ride along the dx pass: g and x are in cache again */
                    const float d = xp[i] - mu;
                    q[i] = w[i] * rs * gp[i] + (k2 * d + k3);
                    tdw[i] += gp[i] * d * rs;
                    tdb[i] += gp[i];
                }
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
