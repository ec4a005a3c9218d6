/* Attention over whole sequences (the fine GPT's 1024-frame passes, the causal prefills) with
 * bfloat16 products, for the fast modes.
 *
 * At these shapes float32 attention is compute-bound: SDPA runs near this CPU's float32 peak, and
 * its bfloat16 variant is no faster, since it converts back to float32 inside. Here both products
 * run on the AVX512-BF16 dot instruction (vdpbf16ps: 16 lanes x 2 products per instruction, twice
 * the float32 FMA's work), with the softmax and every sum in float32:
 *
 *   S = (q k^T) / sqrt(hd)    q, k rounded to bfloat16, sums in float32
 *   P = softmax(S)            float32, then rounded to bfloat16
 *   out = (P v) / sum(P)      v rounded to bfloat16, sums in float32
 *
 * Layouts. vdpbf16ps multiplies lane j's pair of bfloat16 in one operand by lane j's pair in the
 * other. For S, lane j is a key and the pair is two neighbouring head dimensions: k is packed per
 * head as (T/16 tiles, hd/2 pairs, 16 keys) pairs, and each query's pair is broadcast. For P v,
 * lane j is a head dimension and the pair is two neighbouring keys: v is packed as (T/2 key
 * pairs, hd) pairs, and each query's pair of probabilities is broadcast.
 *
 * Every output row follows a fixed order of operations whatever the batch or the thread count.
 * Without AVX512-BF16 the function returns 2 and fastbark uses SDPA (attention.py).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#if defined(__AVX512BF16__) && defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#endif

#define ROWS 8  /* queries per block in S = q k^T (8 accumulators) */
#define OUT_ROWS 4  /* queries per block in P v (4 rows x 4 vectors of 16 dimensions) */

#if defined(__AVX512BF16__) && defined(__AVX512F__) && defined(__AVX512BW__)

/* e^x for x <= 0 (softmax after subtracting the maximum): 2^n * p(r), |relative error| < 2e-7. */
static inline __m512 exp_neg(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  /* x - n ln2, ln2 in two parts */
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);  /* Cephes expf's polynomial */
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);  /* p * 2^n */
}

/* The first n of 16 lanes (none when n <= 0). */
static inline __mmask16 lanes(int64_t n) { return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? 0 : (__mmask16)((1u << n) - 1); }

/* hd floats (a multiple of 16) -> hd/2 pairs of bfloat16, rounded to nearest even. */
static inline void to_pairs(const float *x, int64_t hd, uint32_t *pairs) {
    for (int64_t d = 0; d < hd; d += 16)
        _mm256_storeu_si256((__m256i *)(pairs + d / 2), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x + d)));
}

/* One head: k, v rows of `stride` floats; kp: (tiles, hd/2, 16) pairs; vp: (T/2 rounded up, hd) pairs. */
static void pack_head(const float *k, const float *v, int64_t stride, int64_t T, int64_t hd, uint32_t *kp,
                      uint32_t *vp) {
    const int64_t P = hd / 2, tiles = (T + 15) / 16;
    uint32_t row[64];  /* hd <= 128 */
    memset(kp, 0, (size_t)(tiles * P * 16) * sizeof(uint32_t));
    for (int64_t j = 0; j < T; j++) {
        to_pairs(k + j * stride, hd, row);
        for (int64_t p = 0; p < P; p++) kp[((j / 16) * P + p) * 16 + j % 16] = row[p];
    }
    __m512i interleave;  /* 16-bit element 2i from the first row, 2i + 1 from the second */
    uint16_t idx[32];
    for (int i = 0; i < 16; i++) { idx[2 * i] = (uint16_t)i; idx[2 * i + 1] = (uint16_t)(32 + i); }
    memcpy(&interleave, idx, sizeof interleave);
    const __m512 zero = _mm512_setzero_ps();
    for (int64_t q = 0; q < (T + 1) / 2; q++) {
        const float *even = v + 2 * q * stride, *odd = v + (2 * q + 1) * stride;
        for (int64_t d = 0; d < hd; d += 16) {
            const __m256bh a = _mm512_cvtneps_pbh(_mm512_loadu_ps(even + d));
            const __m256bh b = _mm512_cvtneps_pbh(2 * q + 1 < T ? _mm512_loadu_ps(odd + d) : zero);
            _mm512_storeu_si512(vp + q * hd + d, _mm512_permutex2var_epi16(
                _mm512_castsi256_si512((__m256i)a), interleave, _mm512_castsi256_si512((__m256i)b)));
        }
    }
}

/* Queries i0..i0+n-1 (n <= ROWS) of one head against its first `keys` keys (causal: each row's own
 * count). s: ROWS x (tiles*16) floats, pp: ROWS x (tiles*8) pairs; out rows of `out_stride`. */
static void attend_block(const float *q, int64_t stride, const uint32_t *kp, const uint32_t *vp, int64_t i0,
                         int64_t n, int64_t keys, int causal, int64_t hd, float scale, float *s, uint32_t *pp,
                         float *out, int64_t out_stride) {
    const int64_t P = hd / 2, span = causal ? i0 + n : keys, tiles = (span + 15) / 16, width = tiles * 16;
    uint32_t qp[ROWS][64];  /* hd <= 128 */
    memset(qp, 0, sizeof qp);
    for (int64_t r = 0; r < n; r++) to_pairs(q + (i0 + r) * stride, hd, qp[r]);
    for (int64_t t = 0; t < tiles; t++) {  /* S = q k^T, 16 keys at a time */
        __m512 acc[ROWS];
        for (int r = 0; r < ROWS; r++) acc[r] = _mm512_setzero_ps();
        for (int64_t p = 0; p < P; p++) {
            const __m512bh kv = (__m512bh)_mm512_loadu_si512(kp + (t * P + p) * 16);
            for (int r = 0; r < ROWS; r++)
                acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_set1_epi32((int)qp[r][p]), kv);
        }
        for (int r = 0; r < ROWS; r++) _mm512_storeu_ps(s + r * width + t * 16, _mm512_mul_ps(acc[r], _mm512_set1_ps(scale)));
    }
    float inv_sum[ROWS];
    for (int64_t r = 0; r < n; r++) {  /* softmax of each row over its own keys; the others get exactly 0 */
        float *row = s + r * width;
        const int64_t valid = causal ? i0 + r + 1 : keys;
        __m512 top = _mm512_set1_ps(-INFINITY);
        for (int64_t j = 0; j < valid; j += 16)
            top = _mm512_mask_max_ps(top, lanes(valid - j), top, _mm512_loadu_ps(row + j));
        const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(top));
        __m512 sum = _mm512_setzero_ps();
        for (int64_t j = 0; j < width; j += 16) {
            const __m512 e = _mm512_maskz_mov_ps(lanes(valid - j), exp_neg(_mm512_sub_ps(_mm512_loadu_ps(row + j), m)));
            _mm512_storeu_ps(row + j, e);
            sum = _mm512_add_ps(sum, e);
        }
        inv_sum[r] = 1.0f / _mm512_reduce_add_ps(sum);
        /* rounded in order, neighbours j, j + 1 make up pair j / 2; 16 at a time (vcvtneps2bf16: the same
         * rounding as the two-source vcvtne2ps2bf16, which Bochs, the tests' emulator, gets wrong) */
        for (int64_t j = 0; j < width; j += 16)
            _mm256_storeu_si256((__m256i *)(pp + r * (width / 2) + j / 2), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(row + j)));
    }
    const int64_t pairs = (span + 1) / 2;
    for (int64_t r0 = 0; r0 < n; r0 += OUT_ROWS) {  /* out = P v, OUT_ROWS rows by 64 dimensions at a time */
        const int64_t nr = n - r0 < OUT_ROWS ? n - r0 : OUT_ROWS;
        for (int64_t d0 = 0; d0 < hd; d0 += 64) {
            const int nv = (int)((hd - d0) / 16 < 4 ? (hd - d0) / 16 : 4);
            __m512 acc[OUT_ROWS][4];
            for (int r = 0; r < OUT_ROWS; r++)
                for (int v = 0; v < 4; v++) acc[r][v] = _mm512_setzero_ps();
            for (int64_t j = 0; j < pairs; j++) {
                __m512bh vv[4];
                for (int v = 0; v < nv; v++) vv[v] = (__m512bh)_mm512_loadu_si512(vp + j * hd + d0 + 16 * v);
                for (int r = 0; r < OUT_ROWS; r++) {
                    if (r >= nr) break;
                    const __m512bh pb = (__m512bh)_mm512_set1_epi32((int)pp[(r0 + r) * (width / 2) + j]);
                    for (int v = 0; v < nv; v++) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], pb, vv[v]);
                }
            }
            for (int64_t r = 0; r < nr; r++)
                for (int v = 0; v < nv; v++)
                    _mm512_storeu_ps(out + (i0 + r0 + r) * out_stride + d0 + 16 * v,
                                     _mm512_mul_ps(acc[r][v], _mm512_set1_ps(inv_sum[r0 + r])));
        }
    }
}

#endif

/* qkv: (B, T, 3C) float32 (q, k, v of H heads each, as att_proj writes them); out: (B, T, C).
 * causal: query i sees keys 0..i. Returns 0; 1 when out of memory; 2 when this CPU or build has no
 * AVX512-BF16 or the head size is not a multiple of 16 up to 128. */
int fastbark_attention_bf16(const float *qkv, float *out, int64_t B, int64_t T, int64_t C, int64_t H, int causal,
                            int threads) {
#if defined(__AVX512BF16__) && defined(__AVX512F__) && defined(__AVX512BW__)
    const int64_t hd = C / H, tiles = (T + 15) / 16, width = tiles * 16;
    if (hd % 16 || hd > 128 || hd * H != C) return 2;
    const int64_t k_size = tiles * 16 * (hd / 2), v_size = ((T + 1) / 2) * hd, blocks = (T + ROWS - 1) / ROWS;
    uint32_t *kp = malloc((size_t)(B * H * k_size) * sizeof(uint32_t));
    uint32_t *vp = malloc((size_t)(B * H * v_size) * sizeof(uint32_t));
    float *s = malloc((size_t)(threads * ROWS * width) * sizeof(float));
    uint32_t *pp = malloc((size_t)(threads * ROWS * width / 2) * sizeof(uint32_t));
    int failed = !kp || !vp || !s || !pp;
    if (!failed) {
        const float scale = 1.0f / sqrtf((float)hd);
        #pragma omp parallel num_threads(threads)
        {
            #pragma omp for schedule(static)
            for (int64_t u = 0; u < B * H; u++) {
                const float *base = qkv + (u / H) * T * 3 * C + (u % H) * hd;  /* (b, t = 0, q of head h) */
                pack_head(base + C, base + 2 * C, 3 * C, T, hd, kp + u * k_size, vp + u * v_size);
            }
            const int me = omp_get_thread_num();
            /* causal blocks cost more the later they come: interleave them over the threads */
            #pragma omp for schedule(static, 1)
            for (int64_t w = 0; w < B * H * blocks; w++) {
                const int64_t u = w / blocks, blk = w % blocks, b = u / H, h = u % H;
                const int64_t i0 = blk * ROWS, n = T - i0 < ROWS ? T - i0 : ROWS;
                attend_block(qkv + b * T * 3 * C + h * hd, 3 * C, kp + u * k_size, vp + u * v_size, i0, n, T, causal,
                             hd, scale, s + me * ROWS * width, pp + me * ROWS * width / 2, out + b * T * C + h * hd, C);
            }
        }
    }
    free(kp); free(vp); free(s); free(pp);
    return failed;
#else
    (void)qkv; (void)out; (void)B; (void)T; (void)C; (void)H; (void)causal; (void)threads;
    return 2;
#endif
}
