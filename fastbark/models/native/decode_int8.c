/* One decode step of a causal GPT (semantic or coarse) in the int8 mode: every layer in one call.
 *
 * In Python, a decode step is ~15 small torch ops and 4 C products per layer, each a dispatch or a
 * ctypes call of 5-30 us, and attention over the float32 KV cache through SDPA. Here the whole
 * stack of blocks runs in one OpenMP parallel region:
 *
 *   for each layer:  h = LN1(x); qkv = att_proj(h); cache[pos] = k, v; a = softmax(q k^T / sqrt(hd)) v
 *                    x = x + out_proj(a); h = LN2(x); x = x + mlp.out_proj(gelu(mlp.in_proj(h)))
 *
 * The products are the int8 mode's (int8.h and gemv.c: per-row quantisation, exact int32 sums,
 * the same float epilogue), so each is bit for bit what models/int8.py computes for the same
 * input rows. LayerNorm, attention and GELU are plain float32 loops, close to torch's but not the
 * same bits. Every row of x goes through a fixed sequence of operations whatever the batch size or
 * the thread count, so the step stays batch-invariant.
 *
 * The caller (models/int8_decode.py) passes the layers' tensors as a table of pointers, `Layer8`,
 * and the KV cache as laid out by models/gpt.py: (n_layer, B, H, max_len, hd), float32.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#include "int8.h"

typedef float v16 __attribute__((vector_size(64)));

typedef struct {  /* one Int8Linear (models/int8.py) */
    const int8_t *weight_q;  /* (N, K) */
    const int32_t *weight_sum;  /* (N,) */
    const float *weight_scale;  /* (N,) */
    const float *bias;  /* (N,) or NULL */
} Linear8;

typedef struct {  /* one Block (models/gpt.py), in its checkpoint's order */
    const float *ln1_weight, *ln1_bias;  /* bias may be NULL */
    Linear8 att_proj, att_out_proj;
    const float *ln2_weight, *ln2_bias;
    Linear8 mlp_in_proj, mlp_out_proj;
} Layer8;

enum { STORE, ADD_TO, GELU };  /* what a product does with its result */

static inline float gelu(float v) { return v * 0.5f * (1.0f + erff(v * (float)M_SQRT1_2)); }

/* y (M, N) from the quantised rows (xq, xb, xs) of x (M, K); one thread's share of the N outputs. */
__attribute__((optimize("fp-contract=off")))
static void product(const Linear8 *l, const int8_t *xq, const uint8_t *xb, const float *xs, float *y,
                    int64_t M, int64_t N, int64_t K, int mode) {
    #pragma omp for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const int8_t *wn = l->weight_q + n * K;
        for (int64_t m = 0; m < M; m++) {
            const int32_t acc = dot_s8(xq + m * K, xb + m * K, wn, l->weight_sum[n], K);
            float v = (float)acc * (xs[m] * l->weight_scale[n]);  /* as gemv.c's epilogue */
            if (l->bias) v = v + l->bias[n];
            float *out = y + m * N + n;
            *out = mode == ADD_TO ? *out + v : mode == GELU ? gelu(v) : v;
        }
    }
}

/* LayerNorm of each row of x (M, C) into h, then h's quantised rows: run by one thread. */
static void norm_and_quantize(const float *x, const float *weight, const float *bias, float eps, float *h,
                              int8_t *xq, uint8_t *xb, float *xs, int64_t M, int64_t C) {
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
        quantize_row(h + m * C, C, xq + m * C, xb + m * C, xs + m);
    }
}

static inline float dot_f32(const float *a, const float *b, int64_t n) {
    v16 acc = {0};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        v16 va, vb;
        memcpy(&va, a + i, sizeof va);
        memcpy(&vb, b + i, sizeof vb);
        acc += va * vb;
    }
    float t[16], s = 0.0f;
    memcpy(t, &acc, sizeof t);
    for (int j = 0; j < 16; j++) s += t[j];
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

/* One query against positions 0..T-1 of one head's cache: out (hd) = softmax(q K^T * scale) V. */
static void attend(const float *q, const float *k, const float *v, float *out, float *p, int64_t T, int64_t hd,
                   float scale) {
    float top = -INFINITY;
    for (int64_t t = 0; t < T; t++) {
        p[t] = dot_f32(q, k + t * hd, hd) * scale;
        top = fmaxf(top, p[t]);
    }
    float sum = 0.0f;
    for (int64_t t = 0; t < T; t++) {
        p[t] = expf(p[t] - top);
        sum += p[t];
    }
    memset(out, 0, (size_t)hd * sizeof(float));
    for (int64_t t = 0; t < T; t++)
        for (int64_t d = 0; d < hd; d++) out[d] += p[t] * v[t * hd + d];
    const float inv = 1.0f / sum;
    for (int64_t d = 0; d < hd; d++) out[d] *= inv;
}

/* x (B, C): the step's input embeddings, overwritten by the last block's output (before the final
 * LayerNorm). k_cache, v_cache: (n_layer, B, H, max_len, hd); position `pos` is written here.
 * Returns 0, or 1 when out of memory. */
int fastbark_decode_s8(float *x, const Layer8 *layers, int64_t n_layer, float *k_cache, float *v_cache,
                       int64_t B, int64_t C, int64_t H, int64_t max_len, int64_t pos, float eps, int threads) {
    const int64_t hd = C / H, C4 = 4 * C, T = pos + 1;
    const float scale = 1.0f / sqrtf((float)hd);
    float *h = malloc((size_t)(B * C4) * sizeof(float));  /* normed rows, then the MLP's hidden rows */
    float *qkv = malloc((size_t)(B * 3 * C) * sizeof(float));
    float *att = malloc((size_t)(B * C) * sizeof(float));
    float *xs = malloc((size_t)B * sizeof(float));
    float *p = malloc((size_t)(threads * T) * sizeof(float));  /* one row of attention weights per thread */
    int8_t *xq = malloc((size_t)(B * C4));
    uint8_t *xb = malloc((size_t)(B * C4));
    int failed = !h || !qkv || !att || !xs || !p || !xq || !xb;
    if (!failed) {
        #pragma omp parallel num_threads(threads)
        for (int64_t i = 0; i < n_layer; i++) {
            const Layer8 *l = layers + i;
            float *kc = k_cache + i * B * H * max_len * hd, *vc = v_cache + i * B * H * max_len * hd;
            #pragma omp single
            norm_and_quantize(x, l->ln1_weight, l->ln1_bias, eps, h, xq, xb, xs, B, C);
            product(&l->att_proj, xq, xb, xs, qkv, B, 3 * C, C, STORE);
            #pragma omp for schedule(static)
            for (int64_t u = 0; u < B * H; u++) {  /* one (row, head) each */
                const int64_t b = u / H, head = u % H;
                const float *q = qkv + b * 3 * C + head * hd;  /* qkv row: q (H, hd), k (H, hd), v (H, hd) */
                float *k = kc + u * max_len * hd, *v = vc + u * max_len * hd;
                memcpy(k + pos * hd, q + C, (size_t)hd * sizeof(float));
                memcpy(v + pos * hd, q + 2 * C, (size_t)hd * sizeof(float));
                attend(q, k, v, att + b * C + head * hd, p + (int64_t)omp_get_thread_num() * T, T, hd, scale);
            }
            #pragma omp single
            for (int64_t m = 0; m < B; m++) quantize_row(att + m * C, C, xq + m * C, xb + m * C, xs + m);
            product(&l->att_out_proj, xq, xb, xs, x, B, C, C, ADD_TO);
            #pragma omp single
            norm_and_quantize(x, l->ln2_weight, l->ln2_bias, eps, h, xq, xb, xs, B, C);
            product(&l->mlp_in_proj, xq, xb, xs, h, B, C4, C, GELU);
            #pragma omp single
            for (int64_t m = 0; m < B; m++) quantize_row(h + m * C4, C4, xq + m * C4, xb + m * C4, xs + m);
            product(&l->mlp_out_proj, xq, xb, xs, x, B, C, C4, ADD_TO);
        }
    }
    free(h); free(qkv); free(att); free(xs); free(p); free(xq); free(xb);
    return failed;
}
