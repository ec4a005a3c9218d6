/* One decode step of a causal GPT (semantic or coarse) in a fast mode: every layer in one call.
 *
 * In Python, a decode step is ~15 small torch ops and 4 products per layer, each a dispatch or a
 * ctypes call of 5-30 us, and attention over the KV cache through SDPA. Here the whole stack of
 * blocks runs in one OpenMP parallel region:
 *
 *   for each layer:  h = LN1(x); qkv = att_proj(h); cache[pos] = k, v; a = softmax(q k^T / sqrt(hd)) v
 *                    x = x + out_proj(a); h = LN2(x); x = x + mlp.out_proj(gelu(mlp.in_proj(h)))
 *
 * Four weight formats:
 * - F32 (the exact mode): float32 weights; each product is gemv.h's, bit for bit what the C kernel
 *   (GemvLinear) computes for the same rows.
 * - INT8 (the int8 mode): the products are those of int8.h and gemv.c (per-row quantisation, exact
 *   int32 sums, the same float epilogue), bit for bit what int8.py computes for the same rows.
 * - INT4 (the int4 mode): int4.h's products over rows quantised as in INT8, as gemv.c's
 *   fastbark_linear_q4 computes them.
 * - BF16 (the bfloat16 mode): bfloat16 weights; each input row is rounded to bfloat16, as torch's
 *   bfloat16 mode rounds every activation, and the products sum in float32 (AVX512-BF16, else AVX2 FMAs).
 * The residual stream, LayerNorm, attention and GELU stay in float32; the KV cache is float32 or
 * bfloat16 (the model's dtype), or int8 with a scale per position and head (the int8 and int4 modes: the CPU
 * backend's choice; a score is the integer dot product times its key's scale). With
 * AVX2 and FMA, attention takes the scores of 8 keys at a time and the exponentials 8 at a time
 * (attend_avx2; with it the coarse stage of a 256-token clip ran 9.5% faster in float32 and 12% in int8,
 * RESULTS.md section 44); with AVX-512, 16 at a time (attend_avx512). Every row goes through a fixed sequence of
 * operations whatever the batch size or the thread count, so the step stays batch-invariant.
 *
 * The caller (decode_step.py) passes the layers' tensors as a table of pointers, `Layer`,
 * and the KV cache as laid out by models/gpt.py: (n_layer, B, H, max_len, hd).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif
#include "bf16.h"
#include "gelu.h"
#include "gemv.h"
#include "int4.h"
#include "int8.h"
#include "vec.h"

typedef struct {  /* one linear layer: an Int8Linear (int8.py), Int4Linear (int4.py), or a bfloat16 or float32 one */
    const void *weight;  /* (N, K): int8, bfloat16 or float32; int4: (N, q4_row_bytes(K)) packed bytes */
    const int32_t *weight_sum;  /* (N,), int8 only */
    const float *weight_scale;  /* (N,) for int8; (N, groups) for int4 */
    const float *bias;  /* (N,) float32, or NULL */
} Linear;

typedef struct {  /* one Block (models/gpt.py), in its checkpoint's order; float32 LayerNorm parameters */
    const float *ln1_weight, *ln1_bias;  /* bias may be NULL */
    Linear att_proj, att_out_proj;
    const float *ln2_weight, *ln2_bias;
    Linear mlp_in_proj, mlp_out_proj;
} Layer;

enum { INT8, BF16, F32, INT4 };  /* the weights' format */
enum { STORE, ADD_TO, GELU };  /* what a product does with its result */

typedef struct {  /* the input rows of a product, prepared for the weights' format */
    int8_t *q; uint8_t *aux; float *scale;  /* INT8 and INT4: quantised rows, and what int8.h's dots read besides */
    uint16_t *h;  /* BF16: rows rounded to bfloat16 */
    float *f;  /* F32: the rows as they are (a copy: a product may write where its input was) */
    float *xsum;  /* INT4: each row's sums over its groups (int4.h) */
} Rows;

/* Row m (K wide) of x, prepared as product() reads it. */
static void prepare(int format, const float *x, int64_t m, int64_t K, Rows *r) {
    if (format == INT8 || format == INT4) {
        quantize_row(x + m * K, K, r->q + m * K, r->aux + m * K, r->scale + m);
        if (format == INT4) q4_group_sums(r->q + m * K, K, r->xsum + m * q4_groups(K));
    } else if (format == F32) {
        memcpy(r->f + m * K, x + m * K, (size_t)K * sizeof(float));
    } else {
        for (int64_t k = 0; k < K; k++) r->h[m * K + k] = to_bf16(x[m * K + k]);
    }
}

static inline float gelu(float v) { return v * 0.5f * (1.0f + erff(v * (float)M_SQRT1_2)); }

/* GELU over y[0..n) in place with gelu.h's vectors (the fast modes), split over the threads of the enclosing
 * parallel region in spans of 256 (each value's bits do not depend on its span). */
static void gelu_rows(float *y, int64_t n) {
    const int64_t spans = (n + 255) / 256;
    #pragma omp for schedule(static)
    for (int64_t s = 0; s < spans; s++) gelu_span(y + s * 256, n - s * 256 < 256 ? n - s * 256 : 256);
}

static inline void finish_output(float *out, float v, int mode) {
    *out = mode == ADD_TO ? *out + v : mode == GELU ? gelu(v) : v;
}

/* F32: gemv.h's blocks of outputs into `tmp` (M, N), then each finished where it goes; one thread's share.
 * Compiled with the default contraction, as gemv.c is (gemv.h's bits depend on it). */
static __attribute__((noinline)) void product_f32(const Linear *l, const float *x, float *y, float *tmp, int64_t M,
                                                  int64_t N, int64_t K, int mode) {
    const int64_t units = units_of_w(N);
    if (M == 1) {  /* one row of x: one row of w at a time, as gemv.c does (one stream a thread; RESULTS.md section 46) */
        #pragma omp for schedule(static)
        for (int64_t n = 0; n < N; n++) {
            block((const float *)l->weight, x, l->bias, tmp, n, 0, N, K, 1, 1);
            finish_output(y + n, tmp[n], mode);
        }
        return;
    }
    const int64_t per = units_per_chunk(K), chunks = (units + per - 1) / per;
    #pragma omp for schedule(static)
    for (int64_t c = 0; c < chunks; c++) {
        const int64_t u0 = c * per, u1 = u0 + per < units ? u0 + per : units;
        units_chunk((const float *)l->weight, x, l->bias, tmp, u0, u1, M, N, K);
        const int64_t n0 = unit_row(u0, N), n1 = unit_row(u1, N);  /* the chunk's outputs: rows n0..n1-1 of w */
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = n0; n < n1; n++) finish_output(y + m * N + n, tmp[m * N + n], mode);
    }
}

/* y (M, N) from the prepared rows of x (M, K); one thread's share of the N outputs. */
__attribute__((optimize("fp-contract=off")))
static void product(int format, const Linear *l, const Rows *r, float *y, float *tmp, int64_t M, int64_t N,
                    int64_t K, int mode) {
    if (format == F32) {
        product_f32(l, r->f, y, tmp, M, N, K, mode);
        return;
    }
    #pragma omp for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        for (int64_t m = 0; m < M; m++) {
            float v;
            if (format == INT8) {
                const int32_t acc = dot_s8(r->q + m * K, r->aux + m * K, (const int8_t *)l->weight + n * K,
                                           l->weight_sum[n], K);
                v = (float)acc * (r->scale[m] * l->weight_scale[n]);  /* as gemv.c's epilogue */
            } else if (format == INT4) {
                const int64_t groups = q4_groups(K);
                v = dot_q4(r->q + m * K, r->xsum + m * groups, (const uint8_t *)l->weight + n * q4_row_bytes(K),
                           l->weight_scale + n * groups, K) * r->scale[m];  /* as gemv.c's fastbark_linear_q4 */
            } else {
                v = dot_bf16(r->h + m * K, (const uint16_t *)l->weight + n * K, K);
            }
            if (l->bias) v = v + l->bias[n];
            finish_output(y + m * N + n, v, mode);
        }
    }
}

/* LayerNorm of each row of x (M, C) into h, then h's prepared rows: run by one thread. */
static void norm_and_prepare(int format, const float *x, const float *weight, const float *bias, float eps,
                             float *h, Rows *rows, int64_t M, int64_t C) {
    for (int64_t m = 0; m < M; m++) {
        const float *r = x + m * C;
        double sum = 0.0, sq = 0.0;
        for (int64_t c = 0; c < C; c++) sum += r[c];
        const double mean = sum / (double)C;
        for (int64_t c = 0; c < C; c++) sq += (r[c] - mean) * (r[c] - mean);
        const float inv = (float)(1.0 / sqrt(sq / (double)C + eps)), mu = (float)mean;
        for (int64_t c = 0; c < C; c++) {
            const float v = (r[c] - mu) * inv * weight[c];
            h[m * C + c] = bias ? v + bias[c] : v;
        }
        prepare(format, h, m, C, rows);
    }
}

static inline float dot_f32(const float *a, const float *b, int64_t n) {
    v16 acc = zero();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) acc = madd(acc, load(a + i), load(b + i));
    float t[16], s = 0.0f;
    lanes(acc, t);
    for (int j = 0; j < 16; j++) s += t[j];
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

enum { KV_F32, KV_BF16, KV_INT8 };  /* the KV cache's format; KV_INT8 keeps a float32 scale per position and head */

/* Element i of one head's cache as float32: KV_INT8's integer, before its position's scale. */
static inline float cached(const void *cache, int64_t i, int kv) {
    return kv == KV_BF16 ? from_bf16(((const uint16_t *)cache)[i])
         : kv == KV_INT8 ? (float)((const int8_t *)cache)[i] : ((const float *)cache)[i];
}

#if defined(__AVX2__) && defined(__FMA__)
/* 8 cached floats from element i on (bfloat16 widened exactly; int8 converted exactly, before its scale). */
static inline __m256 cached8(const void *cache, int64_t i, const int kv) {
    if (kv == KV_F32) return _mm256_loadu_ps((const float *)cache + i);
    if (kv == KV_INT8)
        return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)((const int8_t *)cache + i))));
    const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)cache + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* e^x, 8 at a time, for softmax's shifted scores (x <= 0): x = n ln2 + r with |r| <= ln2 / 2 (ln2 in two
 * parts, so r is exact to float32), e^r by its Taylor polynomial to degree 6 (truncation < 1.3e-7 relative),
 * 2^n put into the exponent's bits: at most 2.3e-7 relative error against double's exp over [-87, 0], a few
 * float32 ulps (checked by hand). Below -87, where e^x is under float32's smallest normal number, the
 * result is 0. */
static inline __m256 exp8(__m256 x) {
    const __m256 floor_ = _mm256_set1_ps(-87.0f);
    const __m256 under = _mm256_cmp_ps(x, floor_, _CMP_LT_OQ);
    x = _mm256_max_ps(x, floor_);
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),  /* x / ln2 */
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);  /* ln2's first 10 bits: n * it is exact */
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);  /* ln2 - 0.693359375 */
    __m256 y = _mm256_set1_ps(1.0f / 720.0f);  /* Horner: 1 + r + r^2/2 + ... + r^6/720 */
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.0f / 120.0f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.0f / 24.0f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.0f / 6.0f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(0.5f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.0f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.0f));
    const __m256i two_n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(under, _mm256_mul_ps(y, _mm256_castsi256_ps(two_n)));
}

/* q . k for 8 consecutive cached keys (t0..t0+7) of one head, hd a multiple of 8 (<= 128): each key's
 * products in two accumulators over alternate 8-float chunks, then the 8 sums reduced together, in a fixed
 * order (hadd pairs, then the two 128-bit halves). */
static inline __attribute__((always_inline)) __m256 scores8(const __m256 *q, const void *k, int64_t t0, int64_t hd,
                                                            const int kv) {
    __m256 sums[8];
    for (int j = 0; j < 8; j++) {
        const int64_t at = (t0 + j) * hd;
        __m256 a = _mm256_mul_ps(q[0], cached8(k, at, kv)), b = _mm256_setzero_ps();
        for (int64_t c = 1; c < hd / 8; c++) {
            if (c & 1) b = _mm256_fmadd_ps(q[c], cached8(k, at + 8 * c, kv), b);
            else a = _mm256_fmadd_ps(q[c], cached8(k, at + 8 * c, kv), a);
        }
        sums[j] = _mm256_add_ps(a, b);
    }
    const __m256 s01 = _mm256_hadd_ps(sums[0], sums[1]), s23 = _mm256_hadd_ps(sums[2], sums[3]);
    const __m256 s45 = _mm256_hadd_ps(sums[4], sums[5]), s67 = _mm256_hadd_ps(sums[6], sums[7]);
    const __m256 s03 = _mm256_hadd_ps(s01, s23), s47 = _mm256_hadd_ps(s45, s67);  /* lanes: keys 0-3 | 4-7, halves */
    return _mm256_add_ps(_mm256_permute2f128_ps(s03, s47, 0x20), _mm256_permute2f128_ps(s03, s47, 0x31));
}

static inline float sum8(__m256 v) {  /* a fixed order: the halves, then pairs */
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
}

static inline float max8(__m256 v) {
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
}

/* How far ahead (bytes) a head's attention asks for its keys while it scores them, and for its values, which it
 * reads next (into L2: a head's values are at most 256 KB). Without it the step's attention over a cache that
 * the weights had pushed out of the caches was bound by memory latency: at 800 positions on a Xeon (RESULTS.md
 * section 57) 2.2-2.8 ms a coarse step in bfloat16 or int8, against 0.6-0.8 ms with the cache warm; with it
 * 1.0-1.6 ms (1, 2, 4 and 8 KB measured alike). A prefetch past the end of the cache is a hint, never a fault. */
enum { KV_PREFETCH = 2048 };

/* attend() with 8-wide vectors, for hd a multiple of 8: the scores of 8 keys at a time, the exponentials 8 at
 * a time, the weighted values in hd / 8 accumulators. Each row and head runs the same instructions for a given
 * T, whatever the batch and thread count. KV_INT8: a key's score is its integer dot times its scale, a value's
 * weight its probability times its scale. */
static inline __attribute__((always_inline)) void attend_avx2(const float *q_in, const void *k, const void *v,
                                                              const float *ks, const float *vs, float *out, float *p,
                                                              int64_t T, int64_t hd, float scale, const int kv,
                                                              const void *next) {
    __m256 q[16], acc[16];  /* hd <= 128 */
    const int64_t chunks = hd / 8;
    const __m256 vscale = _mm256_set1_ps(scale);
    for (int64_t c = 0; c < chunks; c++) q[c] = _mm256_loadu_ps(q_in + 8 * c);
    __m256 top8 = _mm256_set1_ps(-INFINITY);
    int64_t t = 0;
    const int64_t row_bytes = hd * (kv == KV_F32 ? 4 : kv == KV_BF16 ? 2 : 1);  /* one position's key or value */
    for (; t + 8 <= T; t += 8) {
        for (int64_t b = 0; b < 8 * row_bytes; b += 64) {  /* KV_PREFETCH: see there */
            _mm_prefetch((const char *)k + t * row_bytes + KV_PREFETCH + b, _MM_HINT_T0);
            _mm_prefetch((const char *)v + t * row_bytes + KV_PREFETCH + b, _MM_HINT_T1);
        }
        __m256 s = scores8(q, k, t, hd, kv);
        if (kv == KV_INT8) s = _mm256_mul_ps(s, _mm256_loadu_ps(ks + t));
        s = _mm256_mul_ps(s, vscale);
        _mm256_storeu_ps(p + t, s);
        top8 = _mm256_max_ps(top8, s);
    }
    float top = max8(top8);
    for (; t < T; t++) {  /* the last T % 8 keys one by one */
        __m256 a = _mm256_setzero_ps();
        for (int64_t c = 0; c < chunks; c++) a = _mm256_fmadd_ps(q[c], cached8(k, t * hd + 8 * c, kv), a);
        p[t] = (kv == KV_INT8 ? sum8(a) * ks[t] : sum8(a)) * scale;
        top = fmaxf(top, p[t]);
    }
    const __m256 vtop = _mm256_set1_ps(top);
    __m256 total8 = _mm256_setzero_ps();
    for (t = 0; t + 8 <= T; t += 8) {
        const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p + t), vtop));
        _mm256_storeu_ps(p + t, e);
        total8 = _mm256_add_ps(total8, e);
    }
    for (; t < T; t++) {  /* the tail through the same function, one lane used */
        p[t] = _mm256_cvtss_f32(exp8(_mm256_set1_ps(p[t] - top)));
        total8 = _mm256_add_ps(total8, _mm256_setr_ps(p[t], 0, 0, 0, 0, 0, 0, 0));
    }
    for (int64_t c = 0; c < chunks; c++) acc[c] = _mm256_setzero_ps();
    for (t = 0; t < T; t++) {
        if (next)  /* the next head's keys, while this one's values are summed */
            for (int64_t b = (t * row_bytes) % 64 ? 64 - (t * row_bytes) % 64 : 0; b < row_bytes; b += 64)
                _mm_prefetch((const char *)next + t * row_bytes + b, _MM_HINT_T1);
        const __m256 w = _mm256_set1_ps(kv == KV_INT8 ? p[t] * vs[t] : p[t]);
        for (int64_t c = 0; c < chunks; c++) acc[c] = _mm256_fmadd_ps(w, cached8(v, t * hd + 8 * c, kv), acc[c]);
    }
    const __m256 inv = _mm256_set1_ps(1.0f / sum8(total8));
    for (int64_t c = 0; c < chunks; c++) _mm256_storeu_ps(out + 8 * c, _mm256_mul_ps(acc[c], inv));
}
#endif

#if defined(__AVX512F__)
/* 16 cached floats from element i (bfloat16 widened exactly; int8 converted exactly, before its scale). */
static inline __m512 cached16(const void *cache, int64_t i, const int kv) {
    if (kv == KV_F32) return _mm512_loadu_ps((const float *)cache + i);
    if (kv == KV_INT8)
        return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)((const int8_t *)cache + i))));
    const __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)cache + i));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* exp8's arithmetic 16 at a time (the same steps, so the same error bound). */
static inline __m512 exp16(__m512 x) {
    const __m512 floor_ = _mm512_set1_ps(-87.0f);
    const __mmask16 over = _mm512_cmp_ps_mask(x, floor_, _CMP_GE_OQ);
    x = _mm512_max_ps(x, floor_);
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 y = _mm512_set1_ps(1.0f / 720.0f);
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f / 120.0f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f / 24.0f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f / 6.0f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(0.5f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f));
    const __m512i two_n = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_maskz_mul_ps(over, y, _mm512_castsi512_ps(two_n));
}

/* Lane j of the result: the sum of the 16 lanes of s[j] (16 keys' products at once), in a fixed order: pairs of
 * keys interleaved and added (lanes 0+2 ..), then pairs of pairs, then the 128-bit quarters across four keys. */
static inline __m512 sums16(const __m512 s[16]) {
    __m512 p[8], q[4];
    for (int j = 0; j < 8; j++)  /* per quarter: [a0+a2, b0+b2, a1+a3, b1+b3] of keys 2j (a) and 2j + 1 (b) */
        p[j] = _mm512_add_ps(_mm512_unpacklo_ps(s[2 * j], s[2 * j + 1]), _mm512_unpackhi_ps(s[2 * j], s[2 * j + 1]));
    for (int j = 0; j < 4; j++) {  /* per quarter: keys 4j..4j+3, each its quarter's four lanes summed */
        const __m512d a = _mm512_castps_pd(p[2 * j]), b = _mm512_castps_pd(p[2 * j + 1]);
        q[j] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    /* quarters 0 + 1 and 2 + 3 of q0 and q1 (keys 0-7), of q2 and q3 (keys 8-15); then across */
    const __m512 w01 = _mm512_add_ps(_mm512_shuffle_f32x4(q[0], q[1], 0x88), _mm512_shuffle_f32x4(q[0], q[1], 0xdd));
    const __m512 w23 = _mm512_add_ps(_mm512_shuffle_f32x4(q[2], q[3], 0x88), _mm512_shuffle_f32x4(q[2], q[3], 0xdd));
    return _mm512_add_ps(_mm512_shuffle_f32x4(w01, w23, 0x88), _mm512_shuffle_f32x4(w01, w23, 0xdd));
}

/* attend() with 16-wide vectors, for hd a multiple of 16: the scores of 16 keys at a time, their sums reduced
 * together (sums16), the exponentials 16 at a time, the weighted values in hd / 16 accumulators: less than half
 * the instructions of attend_avx2 a key. On the Xeon of RESULTS.md section 59, a coarse step at 800 cached
 * positions (alternating builds): int8 2.75-3.15 -> 2.51-3.00 ms, bfloat16 7.11-7.38 -> 6.94-7.20 ms, float32
 * alike; the rest of attention's cost there is the cache's bytes. The same rules as attend_avx2: each row and head
 * runs the same instructions for a given T. */
static inline __attribute__((always_inline)) void attend_avx512(const float *q_in, const void *k, const void *v,
                                                                const float *ks, const float *vs, float *out,
                                                                float *p, int64_t T, int64_t hd, float scale,
                                                                const int kv, const void *next) {
    __m512 q[8], acc[8];  /* hd <= 128 */
    const int64_t chunks = hd / 16;
    const __m512 vscale = _mm512_set1_ps(scale);
    for (int64_t c = 0; c < chunks; c++) q[c] = _mm512_loadu_ps(q_in + 16 * c);
    __m512 top16 = _mm512_set1_ps(-INFINITY);
    int64_t t = 0;
    const int64_t row_bytes = hd * (kv == KV_F32 ? 4 : kv == KV_BF16 ? 2 : 1);  /* one position's key or value */
    for (; t + 16 <= T; t += 16) {
        for (int64_t b = 0; b < 16 * row_bytes; b += 64) {  /* KV_PREFETCH: see there */
            _mm_prefetch((const char *)k + t * row_bytes + KV_PREFETCH + b, _MM_HINT_T0);
            _mm_prefetch((const char *)v + t * row_bytes + KV_PREFETCH + b, _MM_HINT_T1);
        }
        __m512 s[16];
        for (int j = 0; j < 16; j++) {
            const int64_t at = (t + j) * hd;
            s[j] = _mm512_mul_ps(q[0], cached16(k, at, kv));
            for (int64_t c = 1; c < chunks; c++) s[j] = _mm512_fmadd_ps(q[c], cached16(k, at + 16 * c, kv), s[j]);
        }
        __m512 sc = sums16(s);
        if (kv == KV_INT8) sc = _mm512_mul_ps(sc, _mm512_loadu_ps(ks + t));
        sc = _mm512_mul_ps(sc, vscale);
        _mm512_storeu_ps(p + t, sc);
        top16 = _mm512_max_ps(top16, sc);
    }
    float top = _mm512_reduce_max_ps(top16);
    for (; t < T; t++) {  /* the last T % 16 keys one by one */
        __m512 a = _mm512_mul_ps(q[0], cached16(k, t * hd, kv));
        for (int64_t c = 1; c < chunks; c++) a = _mm512_fmadd_ps(q[c], cached16(k, t * hd + 16 * c, kv), a);
        p[t] = (kv == KV_INT8 ? _mm512_reduce_add_ps(a) * ks[t] : _mm512_reduce_add_ps(a)) * scale;
        top = fmaxf(top, p[t]);
    }
    const __m512 vtop = _mm512_set1_ps(top);
    __m512 total16 = _mm512_setzero_ps();
    for (t = 0; t + 16 <= T; t += 16) {
        const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(p + t), vtop));
        _mm512_storeu_ps(p + t, e);
        total16 = _mm512_add_ps(total16, e);
    }
    if (t < T) {  /* the tail through the same function, the lanes past T masked */
        const __mmask16 tail = (__mmask16)((1u << (T - t)) - 1);
        const __m512 e = _mm512_maskz_mov_ps(tail, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, p + t), vtop)));
        _mm512_mask_storeu_ps(p + t, tail, e);
        total16 = _mm512_add_ps(total16, e);
    }
    for (int64_t c = 0; c < chunks; c++) acc[c] = _mm512_setzero_ps();
    for (t = 0; t < T; t++) {
        if (next)  /* the next head's keys, while this one's values are summed */
            for (int64_t b = (t * row_bytes) % 64 ? 64 - (t * row_bytes) % 64 : 0; b < row_bytes; b += 64)
                _mm_prefetch((const char *)next + t * row_bytes + b, _MM_HINT_T1);
        const __m512 w = _mm512_set1_ps(kv == KV_INT8 ? p[t] * vs[t] : p[t]);
        for (int64_t c = 0; c < chunks; c++) acc[c] = _mm512_fmadd_ps(w, cached16(v, t * hd + 16 * c, kv), acc[c]);
    }
    const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(total16));
    for (int64_t c = 0; c < chunks; c++) _mm512_storeu_ps(out + 16 * c, _mm512_mul_ps(acc[c], inv));
}
#endif

/* One query against positions 0..T-1 of one head's cache: out (hd) = softmax(q K^T * scale) V. ks, vs: KV_INT8's
 * scales, one a position. */
static inline __attribute__((always_inline)) void attend(const float *q, const void *k, const void *v,
                                                         const float *ks, const float *vs, float *out, float *p,
                                                         int64_t T, int64_t hd, float scale, const int kv,
                                                         const void *next) {
#if defined(__AVX512F__)
    if (hd % 16 == 0) {
        attend_avx512(q, k, v, ks, vs, out, p, T, hd, scale, kv, next);
        return;
    }
#endif
#if defined(__AVX2__) && defined(__FMA__)
    if (hd % 8 == 0) {
        attend_avx2(q, k, v, ks, vs, out, p, T, hd, scale, kv, next);
        return;
    }
#endif
    (void)next;
    float top = -INFINITY, row[128];  /* hd <= 128 (checked by the caller) */
    for (int64_t t = 0; t < T; t++) {
        if (kv != KV_F32) {
            for (int64_t d = 0; d < hd; d++) row[d] = cached(k, t * hd + d, kv);
            p[t] = (kv == KV_INT8 ? dot_f32(q, row, hd) * ks[t] : dot_f32(q, row, hd)) * scale;
        } else {
            p[t] = dot_f32(q, (const float *)k + t * hd, hd) * scale;
        }
        top = fmaxf(top, p[t]);
    }
    float sum = 0.0f;
    for (int64_t t = 0; t < T; t++) {
        p[t] = expf(p[t] - top);
        sum += p[t];
    }
    memset(out, 0, (size_t)hd * sizeof(float));
    for (int64_t t = 0; t < T; t++) {
        const float w = kv == KV_INT8 ? p[t] * vs[t] : p[t];
        for (int64_t d = 0; d < hd; d++) out[d] += w * cached(v, t * hd + d, kv);
    }
    const float inv = 1.0f / sum;
    for (int64_t d = 0; d < hd; d++) out[d] *= inv;
}

/* Write k and v (hd floats each) at position pos of one head's cache, then attend. KV_INT8: each rounded as
 * int8.h's quantize_row rounds a row (the int8 mode's rounding: symmetric, largest magnitude / 127), as the
 * model's own cache writes do (models/gpt.py). `next`: the next head's keys (a prefetch hint), or NULL. */
static void store_and_attend(const float *q, const float *k_new, const float *v_new, void *k, void *v, float *ks,
                             float *vs, float *out, float *p, int64_t pos, int64_t hd, float scale, int kv,
                             const void *next) {
    if (kv == KV_BF16) {
        for (int64_t d = 0; d < hd; d++) {
            ((uint16_t *)k)[pos * hd + d] = to_bf16(k_new[d]);
            ((uint16_t *)v)[pos * hd + d] = to_bf16(v_new[d]);
        }
        attend(q, k, v, NULL, NULL, out, p, pos + 1, hd, scale, KV_BF16, next);
    } else if (kv == KV_INT8) {
        quantize_row(k_new, hd, (int8_t *)k + pos * hd, NULL, ks + pos);
        quantize_row(v_new, hd, (int8_t *)v + pos * hd, NULL, vs + pos);
        attend(q, k, v, ks, vs, out, p, pos + 1, hd, scale, KV_INT8, next);
    } else {
        memcpy((float *)k + pos * hd, k_new, (size_t)hd * sizeof(float));
        memcpy((float *)v + pos * hd, v_new, (size_t)hd * sizeof(float));
        attend(q, k, v, NULL, NULL, out, p, pos + 1, hd, scale, KV_F32, next);
    }
}

/* x (B, C): the step's input embeddings, overwritten by the last block's output (before the final
 * LayerNorm). k_cache, v_cache: (n_layer, B, H, max_len, hd) in the format `kv` (KV_F32, KV_BF16, KV_INT8);
 * k_scale, v_scale: KV_INT8's scales (n_layer, B, H, max_len), else NULL; position `pos` is written here.
 * Returns 0; 1 when out of memory; 2 for a head size over 128. */
int fastbark_decode_step(int format, float *x, const Layer *layers, int64_t n_layer, void *k_cache, void *v_cache,
                         float *k_scale, float *v_scale, int kv, int64_t B, int64_t C, int64_t H, int64_t max_len,
                         int64_t pos, float eps, int threads) {
    const int64_t hd = C / H, C4 = 4 * C, T = pos + 1, elem = kv == KV_F32 ? 4 : kv == KV_BF16 ? 2 : 1;
    if (hd > 128) return 2;
    const float scale = 1.0f / sqrtf((float)hd);
    float *h = malloc((size_t)(B * C4) * sizeof(float));  /* normed rows, then the MLP's hidden rows */
    float *qkv = malloc((size_t)(B * 3 * C) * sizeof(float));
    float *att = malloc((size_t)(B * C) * sizeof(float));
    float *p = malloc((size_t)(threads * T) * sizeof(float));  /* one row of attention weights per thread */
    float *tmp = malloc((size_t)(B * C4) * sizeof(float));  /* F32: products before they are finished */
    Rows rows = {malloc((size_t)(B * C4)), malloc((size_t)(B * C4)), malloc((size_t)B * sizeof(float)),
                 malloc((size_t)(B * C4) * sizeof(uint16_t)), malloc((size_t)(B * C4) * sizeof(float)),
                 malloc((size_t)(B * q4_groups(C4)) * sizeof(float))};
    int failed = !h || !qkv || !att || !p || !tmp || !rows.q || !rows.aux || !rows.scale || !rows.h || !rows.f
                 || !rows.xsum;
    if (!failed) {
        #pragma omp parallel num_threads(threads)
        for (int64_t i = 0; i < n_layer; i++) {
            const Layer *l = layers + i;
            char *kc = (char *)k_cache + i * B * H * max_len * hd * elem;
            char *vc = (char *)v_cache + i * B * H * max_len * hd * elem;
            float *ksc = kv == KV_INT8 ? k_scale + i * B * H * max_len : NULL;  /* (B, H, max_len) */
            float *vsc = kv == KV_INT8 ? v_scale + i * B * H * max_len : NULL;
            #pragma omp single
            norm_and_prepare(format, x, l->ln1_weight, l->ln1_bias, eps, h, &rows, B, C);
            product(format, &l->att_proj, &rows, qkv, tmp, B, 3 * C, C, STORE);
            #pragma omp for schedule(static)
            for (int64_t u = 0; u < B * H; u++) {  /* one (row, head) each */
                const int64_t b = u / H, head = u % H;
                const float *q = qkv + b * 3 * C + head * hd;  /* qkv row: q (H, hd), k (H, hd), v (H, hd) */
                store_and_attend(q, q + C, q + 2 * C, kc + u * max_len * hd * elem, vc + u * max_len * hd * elem,
                                 ksc ? ksc + u * max_len : NULL, vsc ? vsc + u * max_len : NULL,
                                 att + b * C + head * hd, p + (int64_t)omp_get_thread_num() * T, pos, hd, scale, kv,
                                 u + 1 < B * H ? kc + (u + 1) * max_len * hd * elem : NULL);
            }
            #pragma omp single
            for (int64_t m = 0; m < B; m++) prepare(format, att, m, C, &rows);
            product(format, &l->att_out_proj, &rows, x, tmp, B, C, C, ADD_TO);
            #pragma omp single
            norm_and_prepare(format, x, l->ln2_weight, l->ln2_bias, eps, h, &rows, B, C);
            if (format == F32) {
                product(format, &l->mlp_in_proj, &rows, h, tmp, B, C4, C, GELU);
            } else {  /* the fast modes: the products, then gelu.h's GELU over them */
                product(format, &l->mlp_in_proj, &rows, h, tmp, B, C4, C, STORE);
                gelu_rows(h, B * C4);
            }
            #pragma omp single
            for (int64_t m = 0; m < B; m++) prepare(format, h, m, C4, &rows);
            product(format, &l->mlp_out_proj, &rows, x, tmp, B, C, C4, ADD_TO);
        }
    }
    free(h); free(qkv); free(att); free(p); free(tmp);
    free(rows.q); free(rows.aux); free(rows.scale); free(rows.h); free(rows.f); free(rows.xsum);
    return failed;
}

/* 1 where this build multiplies bfloat16 on the AVX512-BF16 units (else dot_bf16's AVX2 or scalar loop runs). */
int fastbark_has_bf16(void) {
#if defined(__AVX512BF16__) && defined(__AVX512F__)
    return 1;
#else
    return 0;
#endif
}
