/* LayerNorm / GroupNorm / InstanceNorm kernels: the rows layout of kernels.h. */
#include "kernels.h"

/* ------------------------------------------------------------------------------- rows with elementwise weights
   LayerNorm: rows go in groups of RG so that w, b (as long as a row) and the dw, db sums are read once per group.
   A last group with fewer rows repeats the last row (same values to the same place; f = 0 keeps it out of dw). */
#define RG 4

static void group_rows(i64 q, i64 R, i64 *r, float *f) {
    for (int u = 0; u < RG; u++) {
        r[u] = min64(q * RG + u, R - 1);
        f[u] = q * RG + u < R ? 1.0f : 0.0f;
    }
}

static void ln_fwd(const float *x, float *y, i64 R, i64 K, const float *w, const float *b, double eps, float *mean,
                   float *var, float *rstd, int stream, int nt) {
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (i64 q = 0; q < (R + RG - 1) / RG; q++) {
        i64 r[RG];
        float f[RG], mu[RG], rs[RG];
        group_rows(q, R, r, f);
        for (int u = 0; u < RG; u++) {
            if (f[u] != 0.0f) {
                const float *p = x + r[u] * K;
                double s1 = 0.0, s2 = 0.0;
                acc_shift(p, K, p[0], &s1, &s2);
                finish_stats(s1, s2, (double)K, p[0], eps, mean + r[u], var + r[u], rstd + r[u]);
            }
            mu[u] = mean[r[u]];
            rs[u] = rstd[r[u]];
        }
        float tmp[RG][TILE];
        for (i64 i0 = 0; i0 < K; i0 += TILE) {
            const i64 n = min64(TILE, K - i0);
            const float *p0 = x + r[0] * K + i0, *p1 = x + r[1] * K + i0, *p2 = x + r[2] * K + i0,
                        *p3 = x + r[3] * K + i0, *wi = w + i0, *bi = b + i0;
            float *o0 = stream ? tmp[0] : y + r[0] * K + i0, *o1 = stream ? tmp[1] : y + r[1] * K + i0,
                  *o2 = stream ? tmp[2] : y + r[2] * K + i0, *o3 = stream ? tmp[3] : y + r[3] * K + i0;
#pragma omp simd
            for (i64 i = 0; i < n; i++) {
                o0[i] = (p0[i] - mu[0]) * rs[0] * wi[i] + bi[i];
                o1[i] = (p1[i] - mu[1]) * rs[1] * wi[i] + bi[i];
                o2[i] = (p2[i] - mu[2]) * rs[2] * wi[i] + bi[i];
                o3[i] = (p3[i] - mu[3]) * rs[3] * wi[i] + bi[i];
            }
            for (int u = 0; u < RG && stream; u++) stream_copy(y + r[u] * K + i0, tmp[u], n);
        }
        store_fence(stream);
    }
}

/* part: 2 * nt * K floats of per-thread dw, db sums (a static split keeps them independent of scheduling) */
static void ln_bwd(const float *g, const float *x, float *dx, i64 R, i64 K, const float *mean, const float *rstd,
                   const float *w, float *dw, float *db, float *part, int stream, int nt) {
    int team = 1;
#pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num();
        if (t == 0) team = omp_get_num_threads();
        float *restrict tdw = part + 2 * t * K, *restrict tdb = tdw + K;
        memset(tdw, 0, sizeof(float) * 2 * (size_t)K);
#pragma omp for schedule(static)
        for (i64 q = 0; q < (R + RG - 1) / RG; q++) {
            i64 r[RG];
            float f[RG], mu[RG], rs[RG], k2[RG], k3[RG];
            group_rows(q, R, r, f);
            for (int u = 0; u < RG; u++) {
                mu[u] = mean[r[u]];
                rs[u] = rstd[r[u]];
            }
            const float *g0 = g + r[0] * K, *g1 = g + r[1] * K, *g2 = g + r[2] * K, *g3 = g + r[3] * K;
            const float *x0 = x + r[0] * K, *x1 = x + r[1] * K, *x2 = x + r[2] * K, *x3 = x + r[3] * K;
            double sg[RG] = {0}, sgc[RG] = {0}; /* sum(g'), sum(g' * (x - mu)) with g' = w * g */
            for (i64 i0 = 0; i0 < K; i0 += CHUNK) {
                const i64 e = min64(K, i0 + CHUNK);
                float a0 = 0, a1 = 0, a2 = 0, a3 = 0, c0 = 0, c1 = 0, c2 = 0, c3 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3, c0, c1, c2, c3)
                for (i64 i = i0; i < e; i++) {
                    const float v0 = w[i] * g0[i], v1 = w[i] * g1[i], v2 = w[i] * g2[i], v3 = w[i] * g3[i];
                    a0 += v0, a1 += v1, a2 += v2, a3 += v3;
                    c0 += v0 * (x0[i] - mu[0]), c1 += v1 * (x1[i] - mu[1]);
                    c2 += v2 * (x2[i] - mu[2]), c3 += v3 * (x3[i] - mu[3]);
                }
                sg[0] += a0, sg[1] += a1, sg[2] += a2, sg[3] += a3;
                sgc[0] += c0, sgc[1] += c1, sgc[2] += c2, sgc[3] += c3;
            }
            for (int u = 0; u < RG; u++) {
                const double sgx = sgc[u] * rs[u];
                k2[u] = (float)(-(double)rs[u] * rs[u] * sgx / (double)K);
                k3[u] = (float)(-(double)rs[u] * sg[u] / (double)K);
                f[u] *= rs[u]; /* dw weight of row u: rstd, or 0 for a repeated row */
            }
            const float fb0 = f[0] != 0.0f, fb1 = f[1] != 0.0f, fb2 = f[2] != 0.0f, fb3 = f[3] != 0.0f;
            float tmp[RG][TILE];
            for (i64 i0 = 0; i0 < K; i0 += TILE) { /* dw, db ride along the dx pass */
                const i64 n = min64(TILE, K - i0);
                float *d0 = stream ? tmp[0] : dx + r[0] * K + i0, *d1 = stream ? tmp[1] : dx + r[1] * K + i0,
                      *d2 = stream ? tmp[2] : dx + r[2] * K + i0, *d3 = stream ? tmp[3] : dx + r[3] * K + i0;
                const float *h0 = g0 + i0, *h1 = g1 + i0, *h2 = g2 + i0, *h3 = g3 + i0, *y0 = x0 + i0, *y1 = x1 + i0,
                            *y2 = x2 + i0, *y3 = x3 + i0, *wi = w + i0;
                float *ow = tdw + i0, *ob = tdb + i0;
#pragma omp simd
                for (i64 i = 0; i < n; i++) {
                    const float e0 = y0[i] - mu[0], e1 = y1[i] - mu[1], e2 = y2[i] - mu[2], e3 = y3[i] - mu[3];
                    d0[i] = wi[i] * rs[0] * h0[i] + (k2[0] * e0 + k3[0]);
                    d1[i] = wi[i] * rs[1] * h1[i] + (k2[1] * e1 + k3[1]);
                    d2[i] = wi[i] * rs[2] * h2[i] + (k2[2] * e2 + k3[2]);
                    d3[i] = wi[i] * rs[3] * h3[i] + (k2[3] * e3 + k3[3]);
                    ow[i] += (h0[i] * e0 * f[0] + h1[i] * e1 * f[1]) + (h2[i] * e2 * f[2] + h3[i] * e3 * f[3]);
                    ob[i] += (h0[i] * fb0 + h1[i] * fb1) + (h2[i] * fb2 + h3[i] * fb3);
                }
                for (int u = 0; u < RG && stream; u++) stream_copy(dx + r[u] * K + i0, tmp[u], n);
            }
        }
        store_fence(stream);
    }
#pragma omp parallel for num_threads(nt) schedule(static)
    for (i64 i = 0; i < K; i++) {
        float a = 0.0f, c = 0.0f;
        for (int u = 0; u < team; u++) {
            a += part[2 * u * K + i];
            c += part[2 * u * K + K + i];
        }
        dw[i] = a;
        db[i] = c;
    }
}

/* --------------------------------------------------------------------------------------------- rows: (R, K)
   Affine weights: NULL (none); per block (nb > 0: row r holds nb blocks of d = K / nb values, block j of row r uses
   w[(r % period) * nb + j], GroupNorm / InstanceNorm); elementwise (nb == 0: value k uses w[k], LayerNorm). */
void rows_fwd(const float *x, float *y, i64 R, i64 K, const float *w, const float *b, i64 period, i64 nb,
              double eps, float *mean, float *var, float *rstd, int stream, int nt) {
    if (w && nb == 0) {
        ln_fwd(x, y, R, K, w, b, eps, mean, var, rstd, stream, nt);
        return;
    }
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (i64 r = 0; r < R; r++) {
        const float *restrict p = x + r * K;
        float *restrict q = y + r * K;
        double s1 = 0.0, s2 = 0.0;
        acc_shift(p, K, p[0], &s1, &s2);
        finish_stats(s1, s2, (double)K, p[0], eps, mean + r, var + r, rstd + r);
        const float mu = mean[r], rs = rstd[r];
        if (!w) {
            affine_out_s(p, q, K, mu, rs, 0.0f, stream);
        } else {
            const i64 d = K / nb, o = (r % period) * nb;
            for (i64 j = 0; j < nb; j++) affine_out_s(p + j * d, q + j * d, d, mu, w[o + j] * rs, b[o + j], stream);
        }
        store_fence(stream);
    }
}

/* part: 2 * R * nb floats of per-block sums (per-block weights) or 2 * nt * K floats (elementwise, see ln_bwd). */
void rows_bwd(const float *g, const float *x, float *dx, i64 R, i64 K, const float *mean, const float *rstd,
              const float *w, i64 period, i64 nb, float *dw, float *db, float *part, int stream, int nt) {
    if (w && nb == 0) {
        ln_bwd(g, x, dx, R, K, mean, rstd, w, dw, db, part, stream, nt);
        return;
    }
    const double m = (double)K;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (i64 r = 0; r < R; r++) {
        const float *restrict gp = g + r * K, *restrict xp = x + r * K;
        float *restrict q = dx + r * K;
        const float mu = mean[r], rs = rstd[r];
        double sg = 0.0, sgc = 0.0; /* sum(g'), sum(g' * (x - mu)) with g' = w * g */
        if (!w) {
            acc_grad(gp, xp, K, mu, &sg, &sgc);
        } else {
            const i64 d = K / nb, o = (r % period) * nb;
            for (i64 j = 0; j < nb; j++) {
                double a = 0.0, c = 0.0;
                acc_grad(gp + j * d, xp + j * d, d, mu, &a, &c);
                part[2 * (r * nb + j)] = (float)(c * rs);
                part[2 * (r * nb + j) + 1] = (float)a;
                sg += w[o + j] * a;
                sgc += w[o + j] * c;
            }
        }
        const double sgx = sgc * rs;
        const float k2 = (float)(-(double)rs * rs * sgx / m), k3 = (float)(-(double)rs * sg / m);
        if (!w) {
            grad_out_s(gp, xp, q, K, mu, rs, k2, k3, stream);
        } else {
            const i64 d = K / nb, o = (r % period) * nb;
            for (i64 j = 0; j < nb; j++)
                grad_out_s(gp + j * d, xp + j * d, q + j * d, d, mu, w[o + j] * rs, k2, k3, stream);
        }
        store_fence(stream);
    }
    if (!w) return;
    /* dw, db have period * nb entries: sum the per-row blocks that share a weight, in row order */
    for (i64 i = 0; i < period * nb; i++) dw[i] = db[i] = 0.0f;
    for (i64 r = 0; r < R; r++) {
        const i64 o = (r % period) * nb;
        for (i64 j = 0; j < nb; j++) {
            dw[o + j] += part[2 * (r * nb + j)];
            db[o + j] += part[2 * (r * nb + j) + 1];
        }
    }
}
