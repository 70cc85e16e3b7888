/* BatchNorm kernels: the ch and col layouts of kernels.h. */
#include "kernels.h"

/* -------------------------------------------------------------------------------------------------- scratch */
static inline i64 col_blocks(i64 R, i64 K) {
    i64 nb = (i64)1 << 17;
    nb = nb / K < NBLK ? nb / K : NBLK;
    if (nb < 2) nb = 2;
    return min64(nb, R);
}

static inline int small_plane(i64 C, i64 B) { return B < SMALL_PLANE && C * B <= MAX_ROW; }

/* Bytes of scratch a ch (kind 0) or col (kind 1) call needs; the caller allocates it (64-byte aligned). */
i64 scratch_bytes(int kind, i64 R, i64 C, i64 B) {
    if (kind == 1 || small_plane(C, B)) {
        const i64 K = kind == 1 ? C : C * B;
        return 2 * col_blocks(R, K) * K * 8 + 4 * K * 4;
    }
    return 2 * min64(NBLK, R * C) * C * 8 + 3 * C * 4;
}

/* ---------------------------------------------------------------------------------- col: (R, K), K = C * B */
/* s1[j] += sum over rows r0..r1 of (x[r, j] - k[j]), s2[j] of its square: WB vectors of sums stay in registers
   over RB rows at a time, then go to double. */
static void col_moments(const float *restrict x, i64 r0, i64 r1, i64 K, const float *restrict k,
                        double *restrict s1, double *restrict s2) {
    for (i64 b0 = r0; b0 < r1; b0 += RB) {
        const i64 b1 = min64(r1, b0 + RB);
        i64 j0 = 0;
        for (; j0 + W * WB <= K; j0 += W * WB) {
            float fa[W * WB], fb[W * WB], kk[W * WB];
            for (int j = 0; j < W * WB; j++) {
                fa[j] = fb[j] = 0.0f;
                kk[j] = k[j0 + j];
            }
            for (i64 r = b0; r < b1; r++) {
                const float *restrict p = x + r * K + j0;
#pragma omp simd
                for (int j = 0; j < W * WB; j++) {
                    const float d = p[j] - kk[j];
                    fa[j] += d;
                    fb[j] += d * d;
                }
            }
            for (int j = 0; j < W * WB; j++) {
                s1[j0 + j] += fa[j];
                s2[j0 + j] += fb[j];
            }
        }
        if (j0 < K) { /* the last K % 64 columns */
            float fa[W * WB] = {0}, fb[W * WB] = {0};
            const i64 nj = K - j0;
            for (i64 r = b0; r < b1; r++) {
                const float *restrict p = x + r * K + j0;
                for (i64 j = 0; j < nj; j++) {
                    const float d = p[j] - k[j0 + j];
                    fa[j] += d;
                    fb[j] += d * d;
                }
            }
            for (i64 j = 0; j < nj; j++) {
                s1[j0 + j] += fa[j];
                s2[j0 + j] += fb[j];
            }
        }
    }
}

/* s1[j] += sum of g[r, j], s2[j] += sum of g[r, j] * (x[r, j] - mu[j]) over rows r0..r1 */
static void col_grad_sums(const float *restrict g, const float *restrict x, i64 r0, i64 r1, i64 K,
                          const float *restrict mu, double *restrict s1, double *restrict s2) {
    for (i64 b0 = r0; b0 < r1; b0 += RB) {
        const i64 b1 = min64(r1, b0 + RB);
        i64 j0 = 0;
        for (; j0 + W * WB <= K; j0 += W * WB) {
            float fa[W * WB], fb[W * WB], mm[W * WB];
            for (int j = 0; j < W * WB; j++) {
                fa[j] = fb[j] = 0.0f;
                mm[j] = mu[j0 + j];
            }
            for (i64 r = b0; r < b1; r++) {
                const float *restrict gp = g + r * K + j0, *restrict xp = x + r * K + j0;
#pragma omp simd
                for (int j = 0; j < W * WB; j++) {
                    fa[j] += gp[j];
                    fb[j] += gp[j] * (xp[j] - mm[j]);
                }
            }
            for (int j = 0; j < W * WB; j++) {
                s1[j0 + j] += fa[j];
                s2[j0 + j] += fb[j];
            }
        }
        if (j0 < K) {
            float fa[W * WB] = {0}, fb[W * WB] = {0};
            const i64 nj = K - j0;
            for (i64 r = b0; r < b1; r++) {
                const float *restrict gp = g + r * K + j0, *restrict xp = x + r * K + j0;
                for (i64 j = 0; j < nj; j++) {
                    fa[j] += gp[j];
                    fb[j] += gp[j] * (xp[j] - mu[j0 + j]);
                }
            }
            for (i64 j = 0; j < nj; j++) {
                s1[j0 + j] += fa[j];
                s2[j0 + j] += fb[j];
            }
        }
    }
}

#if defined(__AVX512F__)
/* With AVX-512 the two column sums above run on whole rows instead: up to ZG * 16 = 256 columns per group with every
   sum in zmm registers, so the walk is linear and the loop stores nothing. Measured on (8192, 256) with a flushed
   cache: 2x faster than 64-column groups walked down the rows (a 1 KB stride the prefetcher does not follow) and than
   float sums kept in L1 (their stores stall the loads of x). Same order of operations, so the same numbers. */
#define ZG 16

/* vector v of a group of nv (the last one partial: `last`), loaded by a loop over NV >= nv vectors */
static inline __mmask16 zmask(int v, int nv, __mmask16 last) {
    return v < nv - 1 ? (__mmask16)0xFFFF : v == nv - 1 ? last : (__mmask16)0;
}

/* s1[0:n] += the float sums in fa, s2[0:n] += those in fb (NV vectors each) */
static inline __attribute__((always_inline)) void zadd(const __m512 *fa, const __m512 *fb, const int NV, i64 n,
                                                       double *s1, double *s2) {
    float oa[ZG * 16], ob[ZG * 16];
    for (int v = 0; v < NV; v++) {
        _mm512_storeu_ps(oa + 16 * v, fa[v]);
        _mm512_storeu_ps(ob + 16 * v, fb[v]);
    }
    for (i64 j = 0; j < n; j++) {
        s1[j] += oa[j];
        s2[j] += ob[j];
    }
}

/* the sums of col_moments for the nv vectors of columns from j0 (the last one masked by `last`), rows r0..r1 */
static inline __attribute__((always_inline)) void zmoments(const float *x, i64 r0, i64 r1, i64 K, i64 j0,
                                                           const float *k, double *s1, double *s2, const int NV,
                                                           int nv, __mmask16 last) {
    __m512 kk[ZG], fa[ZG], fb[ZG];
    for (int v = 0; v < NV; v++) kk[v] = _mm512_maskz_loadu_ps(zmask(v, nv, last), k + j0 + 16 * v);
    for (i64 b0 = r0; b0 < r1; b0 += RB) {
        const i64 b1 = min64(r1, b0 + RB);
        for (int v = 0; v < NV; v++) fa[v] = fb[v] = _mm512_setzero_ps();
        for (i64 r = b0; r < b1; r++) {
            const float *p = x + r * K + j0;
            for (int v = 0; v < NV; v++) {
                const __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(zmask(v, nv, last), p + 16 * v), kk[v]);
                fa[v] = _mm512_add_ps(fa[v], d);
                fb[v] = _mm512_add_ps(fb[v], _mm512_mul_ps(d, d));
            }
        }
        zadd(fa, fb, NV, min64(K - j0, 16 * nv), s1 + j0, s2 + j0);
    }
}

/* the sums of col_grad_sums for the nv vectors of columns from j0, rows r0..r1 */
static inline __attribute__((always_inline)) void zgrad_sums(const float *g, const float *x, i64 r0, i64 r1, i64 K,
                                                             i64 j0, const float *mu, double *s1, double *s2,
                                                             const int NV, int nv, __mmask16 last) {
    __m512 mm[ZG], fa[ZG], fb[ZG];
    for (int v = 0; v < NV; v++) mm[v] = _mm512_maskz_loadu_ps(zmask(v, nv, last), mu + j0 + 16 * v);
    for (i64 b0 = r0; b0 < r1; b0 += RB) {
        const i64 b1 = min64(r1, b0 + RB);
        for (int v = 0; v < NV; v++) fa[v] = fb[v] = _mm512_setzero_ps();
        for (i64 r = b0; r < b1; r++) {
            const float *gp = g + r * K + j0, *xp = x + r * K + j0;
            for (int v = 0; v < NV; v++) {
                const __mmask16 m = zmask(v, nv, last);
                const __m512 gv = _mm512_maskz_loadu_ps(m, gp + 16 * v);
                fa[v] = _mm512_add_ps(fa[v], gv);
                fb[v] = _mm512_add_ps(fb[v], _mm512_mul_ps(gv, _mm512_sub_ps(_mm512_maskz_loadu_ps(m, xp + 16 * v),
                                                                             mm[v])));
            }
        }
        zadd(fa, fb, NV, min64(K - j0, 16 * nv), s1 + j0, s2 + j0);
    }
}

/* NV, the vectors a loop handles, as a constant in each case (so that the sums stay in registers): 1, 2, 4, 8 or 16,
   the smallest that holds the group's nv; the vectors past nv load nothing */
#define ZCASES(F, ...)                                                                                                \
    if (nv == 1) F(__VA_ARGS__, 1, nv, last);                                                                          \
    else if (nv == 2) F(__VA_ARGS__, 2, nv, last);                                                                     \
    else if (nv <= 4) F(__VA_ARGS__, 4, nv, last);                                                                     \
    else if (nv <= 8) F(__VA_ARGS__, 8, nv, last);                                                                     \
    else F(__VA_ARGS__, 16, nv, last);

static void col_moments_z(const float *x, i64 r0, i64 r1, i64 K, const float *k, double *s1, double *s2) {
    for (i64 j0 = 0; j0 < K; j0 += ZG * 16) {
        const i64 nj = min64(K - j0, ZG * 16);
        const int nv = (int)((nj + 15) / 16);
        const __mmask16 last = (__mmask16)(nj % 16 ? (1u << (nj % 16)) - 1 : 0xFFFF);
        ZCASES(zmoments, x, r0, r1, K, j0, k, s1, s2)
    }
}

static void col_grad_sums_z(const float *g, const float *x, i64 r0, i64 r1, i64 K, const float *mu, double *s1,
                            double *s2) {
    for (i64 j0 = 0; j0 < K; j0 += ZG * 16) {
        const i64 nj = min64(K - j0, ZG * 16);
        const int nv = (int)((nj + 15) / 16);
        const __mmask16 last = (__mmask16)(nj % 16 ? (1u << (nj % 16)) - 1 : 0xFFFF);
        ZCASES(zgrad_sums, g, x, r0, r1, K, j0, mu, s1, s2)
    }
}
#define COL_MOMENTS col_moments_z
#define COL_GRAD_SUMS col_grad_sums_z
#else
#define COL_MOMENTS col_moments
#define COL_GRAD_SUMS col_grad_sums
#endif

/* rows r0..r1 of out = (x - c0[j]) * c1[j] + c2[j] (forward: mean, scale, shift) */
static void col_out(const float *x, float *y, i64 r0, i64 r1, i64 K, const float *restrict c0,
                    const float *restrict c1, const float *restrict c2, int stream) {
    const int staged = stream && K <= TILE;
    const i64 step = staged ? TILE / K : 1;
    float tmp[TILE];
    for (i64 r = r0; r < r1; r += step) {
        const i64 e = min64(r1, r + step);
        for (i64 q = r; q < e; q++) {
            const float *restrict p = x + q * K;
            float *restrict o = staged ? tmp + (q - r) * K : y + q * K;
#pragma omp simd
            for (i64 j = 0; j < K; j++) o[j] = (p[j] - c0[j]) * c1[j] + c2[j];
        }
        if (staged) stream_copy(y + r * K, tmp, (e - r) * K);
    }
    store_fence(stream);
}

/* rows r0..r1 of dx = k1[j] * g + k2[j] * (x - mu[j]) + k3[j] */
static void col_grad_out(const float *g, const float *x, float *dx, i64 r0, i64 r1, i64 K, const float *restrict mu,
                         const float *restrict k1, const float *restrict k2, const float *restrict k3, int stream) {
    const int staged = stream && K <= TILE;
    const i64 step = staged ? TILE / K : 1;
    float tmp[TILE];
    for (i64 r = r0; r < r1; r += step) {
        const i64 e = min64(r1, r + step);
        for (i64 q = r; q < e; q++) {
            const float *restrict gp = g + q * K, *restrict xp = x + q * K;
            float *restrict o = staged ? tmp + (q - r) * K : dx + q * K;
#pragma omp simd
            for (i64 j = 0; j < K; j++) o[j] = k1[j] * gp[j] + (k2[j] * (xp[j] - mu[j]) + k3[j]);
        }
        if (staged) stream_copy(dx + r * K, tmp, (e - r) * K);
    }
    store_fence(stream);
}

/* col on (R, K) with K = C * B: column j belongs to channel j / B */
static void colx_fwd(const float *x, float *y, i64 R, i64 C, i64 B, const float *w, const float *b, double eps,
                     float *mean, float *var, float *rstd, void *scratch, int stream, int nt) {
    const i64 K = C * B, nb = col_blocks(R, K);
    double *part = scratch; /* nb blocks x (s1, s2) x K */
    float *ks = (float *)(part + 2 * nb * K), *mu = ks + K, *sc = mu + K, *sh = sc + K;
    for (i64 j = 0; j < K; j++) ks[j] = x[j / B * B];
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (i64 k = 0; k < nb; k++) {
        double *s1 = part + 2 * k * K, *s2 = s1 + K;
        memset(s1, 0, sizeof(double) * 2 * (size_t)K);
        COL_MOMENTS(x, R * k / nb, R * (k + 1) / nb, K, ks, s1, s2);
    }
    fold_blocks(part, nb, 2 * K, nt);
    const double m = (double)R * (double)B;
    for (i64 c = 0; c < C; c++) {
        double a = 0.0, q = 0.0;
        for (i64 j = c * B; j < (c + 1) * B; j++) {
            a += part[j];
            q += part[K + j];
        }
        finish_stats(a, q, m, ks[c * B], eps, mean + c, var + c, rstd + c);
        for (i64 j = c * B; j < (c + 1) * B; j++) {
            mu[j] = mean[c];
            sc[j] = w ? w[c] * rstd[c] : rstd[c];
            sh[j] = b ? b[c] : 0.0f;
        }
    }
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (i64 k = nb - 1; k >= 0; k--) {
        col_out(x, y, R * k / nb, R * (k + 1) / nb, K, mu, sc, sh, stream);
    }
}

static void colx_bwd(const float *g, const float *x, float *dx, i64 R, i64 C, i64 B, const float *mean,
                     const float *rstd, const float *w, float *dw, float *db, void *scratch, int stream, int nt) {
    const i64 K = C * B, nb = col_blocks(R, K);
    double *part = scratch;
    float *mu = (float *)(part + 2 * nb * K), *k1 = mu + K, *k2 = k1 + K, *k3 = k2 + K;
    for (i64 j = 0; j < K; j++) mu[j] = mean[j / B];
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (i64 k = 0; k < nb; k++) {
        double *s1 = part + 2 * k * K, *s2 = s1 + K;
        memset(s1, 0, sizeof(double) * 2 * (size_t)K);
        COL_GRAD_SUMS(g, x, R * k / nb, R * (k + 1) / nb, K, mu, s1, s2);
    }
    fold_blocks(part, nb, 2 * K, nt);
    const double m = (double)R * (double)B;
    for (i64 c = 0; c < C; c++) {
        double sg = 0.0, sgc = 0.0;
        for (i64 j = c * B; j < (c + 1) * B; j++) {
            sg += part[j];
            sgc += part[K + j];
        }
        const double r = rstd[c], wc = w ? w[c] : 1.0, sgx = sgc * r; /* sum(g * xhat) */
        if (dw) dw[c] = (float)sgx;
        if (db) db[c] = (float)sg;
        for (i64 j = c * B; j < (c + 1) * B; j++) {
            k1[j] = (float)(wc * r);
            k2[j] = (float)(-wc * r * r * sgx / m);
            k3[j] = (float)(-wc * r * sg / m);
        }
    }
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (i64 k = nb - 1; k >= 0; k--) {
        col_grad_out(g, x, dx, R * k / nb, R * (k + 1) / nb, K, mu, k1, k2, k3, stream);
    }
}

void col_fwd(const float *x, float *y, i64 R, i64 C, const float *w, const float *b, double eps, float *mean,
             float *var, float *rstd, void *scratch, int stream, int nt) {
    colx_fwd(x, y, R, C, 1, w, b, eps, mean, var, rstd, scratch, stream, nt);
}

void col_bwd(const float *g, const float *x, float *dx, i64 R, i64 C, const float *mean, const float *rstd,
             const float *w, float *dw, float *db, void *scratch, int stream, int nt) {
    colx_bwd(g, x, dx, R, C, 1, mean, rstd, w, dw, db, scratch, stream, nt);
}

/* ------------------------------------------------------------------------------------------------ ch: (A, C, B)
   Units are the A * C planes of B values, in address order; a block of units adds into its own per-channel sums. */
void ch_fwd(const float *x, float *y, i64 A, i64 C, i64 B, const float *w, const float *b, double eps, float *mean,
            float *var, float *rstd, void *scratch, int stream, int nt) {
    if (small_plane(C, B)) {
        colx_fwd(x, y, A, C, B, w, b, eps, mean, var, rstd, scratch, stream, nt);
        return;
    }
    const i64 n = A * C, nb = min64(NBLK, n);
    double *part = scratch;
    float *sc = (float *)(part + 2 * nb * C), *sh = sc + C;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (i64 k = 0; k < nb; k++) {
        double *s1 = part + 2 * k * C, *s2 = s1 + C;
        memset(s1, 0, sizeof(double) * 2 * (size_t)C);
        for (i64 u = n * k / nb; u < n * (k + 1) / nb; u++) {
            const i64 c = u % C;
            acc_shift(x + u * B, B, x[c * B], s1 + c, s2 + c);
        }
    }
    fold_blocks(part, nb, 2 * C, nt);
    const double m = (double)A * (double)B;
    for (i64 c = 0; c < C; c++) {
        const double a = part[c], q = part[C + c];
        finish_stats(a, q, m, x[c * B], eps, mean + c, var + c, rstd + c);
        sc[c] = w ? w[c] * rstd[c] : rstd[c];
        sh[c] = b ? b[c] : 0.0f;
    }
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (i64 k = nb - 1; k >= 0; k--) {
        for (i64 u = n * k / nb; u < n * (k + 1) / nb; u++) {
            const i64 c = u % C;
            affine_out_s(x + u * B, y + u * B, B, mean[c], sc[c], sh[c], stream);
        }
        store_fence(stream);
    }
}

void ch_bwd(const float *g, const float *x, float *dx, i64 A, i64 C, i64 B, const float *mean, const float *rstd,
            const float *w, float *dw, float *db, void *scratch, int stream, int nt) {
    if (small_plane(C, B)) {
        colx_bwd(g, x, dx, A, C, B, mean, rstd, w, dw, db, scratch, stream, nt);
        return;
    }
    const i64 n = A * C, nb = min64(NBLK, n);
    double *part = scratch;
    float *k1 = (float *)(part + 2 * nb * C), *k2 = k1 + C, *k3 = k2 + C;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (i64 k = 0; k < nb; k++) {
        double *s1 = part + 2 * k * C, *s2 = s1 + C;
        memset(s1, 0, sizeof(double) * 2 * (size_t)C);
        for (i64 u = n * k / nb; u < n * (k + 1) / nb; u++) {
            const i64 c = u % C;
            acc_grad(g + u * B, x + u * B, B, mean[c], s1 + c, s2 + c);
        }
    }
    fold_blocks(part, nb, 2 * C, nt);
    const double m = (double)A * (double)B;
    for (i64 c = 0; c < C; c++) {
        const double sg = part[c], sgc = part[C + c];
        const double r = rstd[c], wc = w ? w[c] : 1.0, sgx = sgc * r;
        if (dw) dw[c] = (float)sgx;
        if (db) db[c] = (float)sg;
        k1[c] = (float)(wc * r);
        k2[c] = (float)(-wc * r * r * sgx / m);
        k3[c] = (float)(-wc * r * sg / m);
    }
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (i64 k = nb - 1; k >= 0; k--) {
        for (i64 u = n * k / nb; u < n * (k + 1) / nb; u++) {
            const i64 c = u % C;
            grad_out_s(g + u * B, x + u * B, dx + u * B, B, mean[c], k1[c], k2[c], k3[c], stream);
        }
        store_fence(stream);
    }
}

