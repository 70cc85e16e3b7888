/* normlab fast kernels: float32 normalization fused with the affine, forward and first-order backward (OpenMP).
   bn.c: the ch and col layouts (BatchNorm); rows.c: the rows layout (LayerNorm, GroupNorm, InstanceNorm).

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
   Outputs larger than the cache (`stream`) are written with non-temporal stores, saving the read-for-ownership
   (8-18% measured on BatchNorm).
   Statistics are one pass around a shift (the set's first value), summed in float within chunks and in double
   across them, so inputs like 1e4 + N(0, 1) keep their digits; outputs are (x - mean) * scale + shift, never
   x * a + c, for the same reason. Weights w, b are NULL for no affine. */
#pragma once
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
#define SMALL_PLANE 32 /* NCHW planes below this many values (4x4, 5x5) go to col when C * B is at most MAX_ROW */
#define MAX_ROW 16384  /* (measured: from 6x6 up, the ch plane loops beat col's walk over rows of C * B) */
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

/* part[0:n] = the sum of the nb blocks part[k*n:(k+1)*n], added in block order (so deterministic). Block by block,
   in address order: summing one column across the blocks instead strides n doubles per step, and with n a multiple of
   512 every step lands in the same L1 set and misses (measured: ~150 us per call on (8192, 256)). */
static void fold_blocks(double *part, i64 nb, i64 n, int nt) {
    const i64 span = 1024, nchunk = (n + span - 1) / span;
    const int threads = nb * n >= (1 << 16) ? nt : 1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (i64 q = 0; q < nchunk; q++) {
        const i64 j0 = q * span, j1 = min64(n, j0 + span);
        for (i64 k = 1; k < nb; k++) {
            const double *restrict src = part + k * n;
            double *restrict dst = part;
#pragma omp simd
            for (i64 j = j0; j < j1; j++) dst[j] += src[j];
        }
    }
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

/* the same two, staged through L1 and written with non-temporal stores when `stream` */
static inline void affine_out_s(const float *x, float *y, i64 n, float mu, float sc, float sh, int stream) {
    float tmp[TILE];
    for (i64 i = 0; i < n && stream; i += TILE) {
        affine_out(x + i, tmp, min64(TILE, n - i), mu, sc, sh);
        stream_copy(y + i, tmp, min64(TILE, n - i));
    }
    if (!stream) affine_out(x, y, n, mu, sc, sh);
}

static inline void grad_out_s(const float *g, const float *x, float *dx, i64 n, float mu, float k1, float k2,
                              float k3, int stream) {
    float tmp[TILE];
    for (i64 i = 0; i < n && stream; i += TILE) {
        grad_out(g + i, x + i, tmp, min64(TILE, n - i), mu, k1, k2, k3);
        stream_copy(dx + i, tmp, min64(TILE, n - i));
    }
    if (!stream) grad_out(g, x, dx, n, mu, k1, k2, k3);
}

