/* normlab fast kernels: float32 normalization fused with the affine, forward and first-order backward (OpenMP).

   The math is core.py's (docs/backward.md), per statistic set of m values:
       forward   xhat = (x - mean) * rstd,  rstd = 1 / sqrt(var + eps),  y = w * xhat + b
       backward  g' = w * g,  dx = rstd * (g' - sum(g') / m - xhat * sum(g' * xhat) / m),
                 dw = sum over the sets sharing w of g * xhat,  db = the same of g
   written per set as y = (x - mean) * scale + shift and dx = k1 * g + k2 * (x - mean) + k3.
   Layouts (normlab/fast/__init__.py picks one):
       ch   x is (A, C, B) contiguous, one set per c over (a, b)      BatchNorm on NCHW / (N, C, L)
       col  x is (R, C * B) contiguous, one set per channel           BatchNorm on channels_last (B = 1), (N, C),
                                                                       and NCHW with small planes
       rows x is (R, K) contiguous, one set per row r                 LayerNorm, GroupNorm, InstanceNorm
   Every pass reads memory in address order (4 KB pages defeat the prefetcher on strided walks). Work is split into
   a fixed number of blocks whose partial sums are added in block order, so the numbers do not depend on which
   thread ran which block (threads take blocks dynamically: a thread slowed by another process does not stall the
   other). Second passes take the blocks last to first, starting on what the first pass left in cache (within a
   block, addresses go up: descending walks defeat the prefetcher, measured 2-3x slower).
   Statistics are one pass around a shift (the set's first value), summed in float within chunks and in double
   across them, so inputs like 1e4 + N(0, 1) keep their digits; outputs are (x - mean) * scale + shift, never
   x * a + c, for the same reason. Weights w, b are NULL for no affine. */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <omp.h>
#if defined(__AVX512F__) || defined(__AVX__)
#include <immintrin.h>
#endif

typedef int64_t i64;

#define CHUNK 512      /* float partial sums over at most this many values, then double */
#define NBLK 64        /* work blocks per pass */
#define SMALL_PLANE 256
#define MAX_ROW 16384  /* NCHW planes below SMALL_PLANE values go to col when C * B is at most this */
#define W 16           /* col: columns per register block (one vector) */
#define WB 4           /* col: register blocks per column group */
#define RB 64          /* col: rows per float partial sum */
#define TILE 1024      /* floats staged in L1 before non-temporal stores */

static inline i64 min64(i64 a, i64 b) { return a < b ? a : b; }

/* ------------------------------------------------------------------------------------------- elementary loops */
/* s1 += sum(p - k), s2 += sum((p - k)^2) */
static inline void acc_shift(const float *restrict p, i64 n, float k, double *s1, double *s2) {
    for (i64 i0 = 0; i0 < n; i0 += CHUNK) {
        const i64 e = min64(n, i0 + CHUNK);
        float a = 0.0f, b = 0.0f;
#pragma omp simd reduction(+ : a, b)
        for (i64 i = i0; i < e; i++) {
            const float d = p[i] - k;
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
        const i64 e = min64(n, i0 + CHUNK);
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

static inline void finish_stats(double s1, double s2, double m, float k, double eps, float *mean, float *var,
                                float *rstd) {
    const double d = s1 / m;
    double v = s2 / m - d * d;
    if (v < 0.0) v = 0.0; /* NaN stays NaN */
    *mean = (float)(k + d);
    *var = (float)v;
    *rstd = (float)(1.0 / sqrt(v + eps));
}

/* dst[0:n] = src[0:n] with non-temporal stores (outputs larger than the cache: no read-for-ownership) */
static inline void stream_copy(float *restrict dst, const float *restrict src, i64 n) {
    i64 i = 0;
#if defined(__AVX512F__)
    for (; i < n && ((uintptr_t)(dst + i) & 63); i++) dst[i] = src[i];
    for (; i + 16 <= n; i += 16) _mm512_stream_ps(dst + i, _mm512_loadu_ps(src + i));
#elif defined(__AVX__)
    for (; i < n && ((uintptr_t)(dst + i) & 31); i++) dst[i] = src[i];
    for (; i + 8 <= n; i += 8) _mm256_stream_ps(dst + i, _mm256_loadu_ps(src + i));
#endif
    for (; i < n; i++) dst[i] = src[i];
}

static inline void store_fence(int stream) {
#if defined(__AVX__)
    if (stream) _mm_sfence();
#else
    (void)stream;
#endif
}

static inline void affine_out(const float *restrict x, float *restrict y, i64 n, float mu, float sc, float sh) {
#pragma omp simd
    for (i64 i = 0; i < n; i++) y[i] = (x[i] - mu) * sc + sh;
}

static inline void grad_out(const float *restrict g, const float *restrict x, float *restrict dx, i64 n, float mu,
                            float k1, float k2, float k3) {
#pragma omp simd
    for (i64 i = 0; i < n; i++) dx[i] = k1 * g[i] + (k2 * (x[i] - mu) + k3);
}

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
        col_moments(x, R * k / nb, R * (k + 1) / nb, K, ks, s1, s2);
    }
    const double m = (double)R * (double)B;
    for (i64 c = 0; c < C; c++) {
        double a = 0.0, q = 0.0;
        for (i64 k = 0; k < nb; k++)
            for (i64 j = c * B; j < (c + 1) * B; j++) {
                a += part[2 * k * K + j];
                q += part[2 * k * K + K + j];
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
        col_grad_sums(g, x, R * k / nb, R * (k + 1) / nb, K, mu, s1, s2);
    }
    const double m = (double)R * (double)B;
    for (i64 c = 0; c < C; c++) {
        double sg = 0.0, sgc = 0.0;
        for (i64 k = 0; k < nb; k++)
            for (i64 j = c * B; j < (c + 1) * B; j++) {
                sg += part[2 * k * K + j];
                sgc += part[2 * k * K + K + j];
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
    const double m = (double)A * (double)B;
    for (i64 c = 0; c < C; c++) {
        double a = 0.0, q = 0.0;
        for (i64 k = 0; k < nb; k++) {
            a += part[2 * k * C + c];
            q += part[2 * k * C + C + c];
        }
        finish_stats(a, q, m, x[c * B], eps, mean + c, var + c, rstd + c);
        sc[c] = w ? w[c] * rstd[c] : rstd[c];
        sh[c] = b ? b[c] : 0.0f;
    }
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (i64 k = nb - 1; k >= 0; k--) {
        for (i64 u = n * k / nb; u < n * (k + 1) / nb; u++) {
            const i64 c = u % C;
            if (!stream) {
                affine_out(x + u * B, y + u * B, B, mean[c], sc[c], sh[c]);
                continue;
            }
            float tmp[TILE];
            for (i64 i = 0; i < B; i += TILE) {
                affine_out(x + u * B + i, tmp, min64(TILE, B - i), mean[c], sc[c], sh[c]);
                stream_copy(y + u * B + i, tmp, min64(TILE, B - i));
            }
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
    const double m = (double)A * (double)B;
    for (i64 c = 0; c < C; c++) {
        double sg = 0.0, sgc = 0.0;
        for (i64 k = 0; k < nb; k++) {
            sg += part[2 * k * C + c];
            sgc += part[2 * k * C + C + c];
        }
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
            if (!stream) {
                grad_out(g + u * B, x + u * B, dx + u * B, B, mean[c], k1[c], k2[c], k3[c]);
                continue;
            }
            float tmp[TILE];
            for (i64 i = 0; i < B; i += TILE) {
                grad_out(g + u * B + i, x + u * B + i, tmp, min64(TILE, B - i), mean[c], k1[c], k2[c], k3[c]);
                stream_copy(dx + u * B + i, tmp, min64(TILE, B - i));
            }
        }
        store_fence(stream);
    }
}

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
                   float *var, float *rstd, int nt) {
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
        const float *p0 = x + r[0] * K, *p1 = x + r[1] * K, *p2 = x + r[2] * K, *p3 = x + r[3] * K;
        float *o0 = y + r[0] * K, *o1 = y + r[1] * K, *o2 = y + r[2] * K, *o3 = y + r[3] * K;
#pragma omp simd
        for (i64 i = 0; i < K; i++) {
            const float wi = w[i], bi = b[i];
            o0[i] = (p0[i] - mu[0]) * rs[0] * wi + bi;
            o1[i] = (p1[i] - mu[1]) * rs[1] * wi + bi;
            o2[i] = (p2[i] - mu[2]) * rs[2] * wi + bi;
            o3[i] = (p3[i] - mu[3]) * rs[3] * wi + bi;
        }
    }
}

/* part: 2 * nt * K floats of per-thread dw, db sums (a static split keeps them independent of scheduling) */
static void ln_bwd(const float *g, const float *x, float *dx, i64 R, i64 K, const float *mean, const float *rstd,
                   const float *w, float *dw, float *db, float *part, int nt) {
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
            float *d0 = dx + r[0] * K, *d1 = dx + r[1] * K, *d2 = dx + r[2] * K, *d3 = dx + r[3] * K;
            const float fb0 = f[0] != 0.0f, fb1 = f[1] != 0.0f, fb2 = f[2] != 0.0f, fb3 = f[3] != 0.0f;
#pragma omp simd
            for (i64 i = 0; i < K; i++) { /* dw, db ride along the dx pass */
                const float e0 = x0[i] - mu[0], e1 = x1[i] - mu[1], e2 = x2[i] - mu[2], e3 = x3[i] - mu[3];
                d0[i] = w[i] * rs[0] * g0[i] + (k2[0] * e0 + k3[0]);
                d1[i] = w[i] * rs[1] * g1[i] + (k2[1] * e1 + k3[1]);
                d2[i] = w[i] * rs[2] * g2[i] + (k2[2] * e2 + k3[2]);
                d3[i] = w[i] * rs[3] * g3[i] + (k2[3] * e3 + k3[3]);
                tdw[i] += (g0[i] * e0 * f[0] + g1[i] * e1 * f[1]) + (g2[i] * e2 * f[2] + g3[i] * e3 * f[3]);
                tdb[i] += (g0[i] * fb0 + g1[i] * fb1) + (g2[i] * fb2 + g3[i] * fb3);
            }
        }
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
              double eps, float *mean, float *var, float *rstd, int nt) {
    if (w && nb == 0) {
        ln_fwd(x, y, R, K, w, b, eps, mean, var, rstd, nt);
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
            affine_out(p, q, K, mu, rs, 0.0f);
        } else {
            const i64 d = K / nb, o = (r % period) * nb;
            for (i64 j = 0; j < nb; j++) affine_out(p + j * d, q + j * d, d, mu, w[o + j] * rs, b[o + j]);
        }
    }
}

/* part: 2 * R * nb floats of per-block sums (per-block weights) or 2 * nt * K floats (elementwise, see ln_bwd). */
void rows_bwd(const float *g, const float *x, float *dx, i64 R, i64 K, const float *mean, const float *rstd,
              const float *w, i64 period, i64 nb, float *dw, float *db, float *part, int nt) {
    if (w && nb == 0) {
        ln_bwd(g, x, dx, R, K, mean, rstd, w, dw, db, part, nt);
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
            grad_out(gp, xp, q, K, mu, rs, k2, k3);
        } else {
            const i64 d = K / nb, o = (r % period) * nb;
            for (i64 j = 0; j < nb; j++) grad_out(gp + j * d, xp + j * d, q + j * d, d, mu, w[o + j] * rs, k2, k3);
        }
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
