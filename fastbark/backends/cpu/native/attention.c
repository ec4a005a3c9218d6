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
 *
 * On AMX (fastbark_attention_amx, below) the same three lines run on the tiles, 32 queries at a time: S for the
 * block's 32 rows against every key it sees (TDPBF16PS, float32 sums), the softmax of each row in float32 with
 * AVX-512 into bfloat16 tiles of P, then P v (TDPBF16PS) and the division by each row's sum.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#include "amx.h"
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

#if FASTBARK_AMX

/* AMX layouts (a tile: 16 rows of 64 bytes, read by TDPBF16PS as 16 rows of 32 bfloat16 (A) or as 16 rows of
 * 16 lanes of a bfloat16 pair (B)), for one (text, head) of T keys, Tp = T rounded up to 32, hd = 32 * HT:
 *   keys   kp [Tp/16 key tiles][HT][16 r][16 keys j] pair (k[j][32t + 2r], k[j][32t + 2r + 1])   B of S = q k^T
 *   values vp [hd/16][Tp/32][16 r][16 dims d]      pair (v[32t + 2r][d], v[32t + 2r + 1][d])    B of P v
 *   queries   [2][HT][16 rows][32]                  q rows of a block of 32                      A of S
 *   P         [2][Tp/32][16 rows][32]                a block's probabilities, bfloat16            A of P v
 * Keys and values past T are zero (a zero probability times garbage could be NaN). */

/* 2^t = 2^floor(t) * p(f), f = t - floor(t) in [0, 1) in one instruction (vreduceps), p of degree 4 fitted to 2^f's
 * relative error on [0, 1) (< 2.7e-6, far below the bfloat16 rounding of P that follows; Taylor's degree 4 is
 * 7.5e-4), and vscalefps multiplies by 2^floor(t) itself, taking it to 0 below float32's range. On the Xeon of
 * RESULTS.md section 58 512-bit arithmetic issues one instruction a cycle and this softmax was a third of a fine
 * pass's attention: each instruction counts (6 here; rounding t by adding and subtracting 1.5 * 2^23 took 8). */
static inline __m512 exp2_ps(__m512 t) {
    const __m512 f = _mm512_reduce_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m512 p = _mm512_set1_ps(1.3534168e-2f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.2011460e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4144275e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9300383e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0000026f));
    return _mm512_scalef_ps(p, t);
}

/* Row `i` of q, k or v (hd values at `base`, float32 or bfloat16) as hd bfloat16, rounded to nearest even. */
static inline void bf16_row(const void *base, int bf16, int64_t at, int64_t hd, uint16_t *row) {
    if (bf16) { memcpy(row, (const uint16_t *)base + at, (size_t)hd * 2); return; }
    to_pairs((const float *)base + at, hd, (uint32_t *)row);
}

/* One (text, head): its keys and values (rows of `stride` values from k, v) into kp and vp. */
static void amx_pack_head(const void *qkv, int bf16, int64_t k_at, int64_t v_at, int64_t stride, int64_t T, int64_t hd,
                          uint8_t *kp, uint8_t *vp) {
    const int64_t Tp = round_up(T, BLOCK), ht = hd / 32;
    uint16_t row[128], odd[128], keys[16][128];  /* hd <= 128 */
    for (int64_t j0 = 0; j0 < Tp; j0 += 16) {  /* 16 keys: row j of a tile holds pair j of each (a transpose) */
        for (int64_t i = 0; i < 16; i++) {
            if (j0 + i < T) bf16_row(qkv, bf16, k_at + (j0 + i) * stride, hd, keys[i]);
            else memset(keys[i], 0, sizeof keys[i]);
        }
        for (int64_t t = 0; t < ht; t++) {
            __m512i r[16];
            for (int64_t i = 0; i < 16; i++) r[i] = _mm512_loadu_si512(keys[i] + 32 * t);  /* key i's 16 pairs */
            transpose16(r);  /* r[p]: pair p of the 16 keys */
            for (int64_t p = 0; p < 16; p++)
                _mm512_storeu_si512(kp + ((j0 / 16) * ht + t) * TILE_BYTES + p * ROW_BYTES, r[p]);
        }
    }
    __m512i interleave;  /* 16-bit element 2i from the first row, 2i + 1 from the second */
    uint16_t idx[32];
    for (int i = 0; i < 16; i++) { idx[2 * i] = (uint16_t)i; idx[2 * i + 1] = (uint16_t)(32 + i); }
    memcpy(&interleave, idx, sizeof interleave);
    for (int64_t p = 0; p < Tp / 2; p++) {  /* keys 2p, 2p + 1: a row of 16 pairs in each of the hd/16 tiles */
        if (2 * p < T) bf16_row(qkv, bf16, v_at + 2 * p * stride, hd, row);
        else memset(row, 0, sizeof row);
        if (2 * p + 1 < T) bf16_row(qkv, bf16, v_at + (2 * p + 1) * stride, hd, odd);
        else memset(odd, 0, sizeof odd);
        for (int64_t d = 0; d < hd; d += 16)
            _mm512_storeu_si512(vp + ((d / 16) * (Tp / 32) + p / 16) * TILE_BYTES + (p % 16) * ROW_BYTES,
                                _mm512_permutex2var_epi16(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(row + d))),
                                                          interleave,
                                                          _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(odd + d)))));
    }
}

/* 32 queries from i0 of one (text, head) against the keys they see, into out (rows of `out_stride` values, float32
 * or bfloat16). work: this thread's scratch for the query tiles, S (32 x span), P's tiles and 32 x 32 sums. */
static void amx_attend_block(const void *qkv, int bf16, int64_t q_at, int64_t stride, const uint8_t *kp,
                             const uint8_t *vp, int64_t i0, int64_t T, int causal, int64_t hd, float scale,
                             uint8_t *work, void *out, int64_t out_at, int64_t out_stride) {
    const int64_t Tp = round_up(T, BLOCK), ht = hd / 32, n = T - i0 < BLOCK ? T - i0 : BLOCK;
    const int64_t span = causal ? i0 + n : T, sp = round_up(span, BLOCK), pt = sp / BLOCK;
    uint8_t *qt = work, *pp = qt + 2 * ht * TILE_BYTES;
    float *s = (float *)(pp + 2 * pt * TILE_BYTES), *o = s + BLOCK * sp;
    uint16_t row[128];
    for (int64_t r = 0; r < BLOCK; r++) {  /* the block's queries as A tiles; rows past T zero */
        if (r < n) bf16_row(qkv, bf16, q_at + (i0 + r) * stride, hd, row);
        else memset(row, 0, sizeof row);
        for (int64_t t = 0; t < ht; t++)
            memcpy(qt + ((r / 16) * ht + t) * TILE_BYTES + (r % 16) * ROW_BYTES, row + 32 * t, ROW_BYTES);
    }
    for (int64_t kb = 0; kb < pt; kb++) {  /* S = q k^T, 32 keys at a time: 2 x 2 tiles of sums */
        _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
        for (int64_t t = 0; t < ht; t++) {
            _tile_loadd(4, qt + t * TILE_BYTES, ROW_BYTES);
            _tile_loadd(5, qt + (ht + t) * TILE_BYTES, ROW_BYTES);
            _tile_loadd(6, kp + (2 * kb * ht + t) * TILE_BYTES, ROW_BYTES);
            _tile_loadd(7, kp + ((2 * kb + 1) * ht + t) * TILE_BYTES, ROW_BYTES);
            _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7); _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
        }
        float *c = s + kb * BLOCK;
        _tile_stored(0, c, sp * 4); _tile_stored(1, c + 16, sp * 4);
        _tile_stored(2, c + 16 * sp, sp * 4); _tile_stored(3, c + 16 * sp + 16, sp * 4);
    }
    float inv_sum[BLOCK];
    const __m512 sc = _mm512_set1_ps(scale * 1.44269504088896341f);  /* to powers of 2 */
    for (int64_t r = 0; r < BLOCK; r++) {  /* softmax of each row over its own keys; P in its tiles */
        const float *srow = s + r * sp;
        uint8_t *prow = pp + (r / 16) * pt * TILE_BYTES + (r % 16) * ROW_BYTES;
        const int64_t valid = r >= n ? 0 : causal ? i0 + r + 1 : T;
        /* the maximum over 4 chains (one would wait on each max's latency) */
        __m512 top[4] = {_mm512_set1_ps(-INFINITY), _mm512_set1_ps(-INFINITY), _mm512_set1_ps(-INFINITY),
                         _mm512_set1_ps(-INFINITY)};
        int64_t j = 0;
        for (; j + 64 <= valid; j += 64)
            for (int c = 0; c < 4; c++) top[c] = _mm512_max_ps(top[c], _mm512_loadu_ps(srow + j + 16 * c));
        for (; j < valid; j += 16) top[0] = _mm512_mask_max_ps(top[0], lanes(valid - j), top[0], _mm512_loadu_ps(srow + j));
        const float m = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(top[0], top[1]), _mm512_max_ps(top[2], top[3])));
        /* e = 2^((s - max) * scale * log2(e)), one rounding fewer than exp(s * scale - max * scale) */
        const __m512 shift = _mm512_set1_ps(valid ? -m * (scale * 1.44269504088896341f) : 0.0f);
        __m512 sum0 = _mm512_setzero_ps(), sum1 = _mm512_setzero_ps();
        for (j = 0; j < sp; j += 32) {
            __m512 e0 = exp2_ps(_mm512_fmadd_ps(_mm512_loadu_ps(srow + j), sc, shift));
            __m512 e1 = exp2_ps(_mm512_fmadd_ps(_mm512_loadu_ps(srow + j + 16), sc, shift));
            if (j + 32 > valid) {  /* keys this row does not see, and the padding: 0 */
                e0 = _mm512_maskz_mov_ps(lanes(valid - j), e0);
                e1 = _mm512_maskz_mov_ps(lanes(valid - j - 16), e1);
            }
            sum0 = _mm512_add_ps(sum0, e0);
            sum1 = _mm512_add_ps(sum1, e1);
            uint8_t *at = prow + (j / 32) * TILE_BYTES;
            _mm512_storeu_si512(at, (__m512i)_mm512_cvtne2ps_pbh(e1, e0));  /* e0's 16 values, then e1's */
        }
        inv_sum[r] = valid ? 1.0f / _mm512_reduce_add_ps(_mm512_add_ps(sum0, sum1)) : 0.0f;
    }
    for (int64_t d0 = 0; d0 < hd; d0 += BLOCK) {  /* out = P v, 32 dimensions at a time: 2 x 2 tiles of sums */
        _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
        const uint8_t *v0 = vp + (d0 / 16) * (Tp / 32) * TILE_BYTES, *v1 = v0 + (Tp / 32) * TILE_BYTES;
        for (int64_t t = 0; t < pt; t++) {
            _tile_loadd(4, pp + t * TILE_BYTES, ROW_BYTES);
            _tile_loadd(5, pp + (pt + t) * TILE_BYTES, ROW_BYTES);
            _tile_loadd(6, v0 + t * TILE_BYTES, ROW_BYTES);
            _tile_loadd(7, v1 + t * TILE_BYTES, ROW_BYTES);
            _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7); _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
        }
        _tile_stored(0, o, BLOCK * 4); _tile_stored(1, o + 16, BLOCK * 4);
        _tile_stored(2, o + 16 * BLOCK, BLOCK * 4); _tile_stored(3, o + 16 * BLOCK + 16, BLOCK * 4);
        for (int64_t r = 0; r < n; r++)
            for (int64_t c = 0; c < BLOCK; c += 16) {
                const __m512 v = _mm512_mul_ps(_mm512_loadu_ps(o + r * BLOCK + c), _mm512_set1_ps(inv_sum[r]));
                const int64_t at = out_at + (i0 + r) * out_stride + d0 + c;
                if (bf16) _mm256_storeu_si256((__m256i *)((uint16_t *)out + at), (__m256i)_mm512_cvtneps_pbh(v));
                else _mm512_storeu_ps((float *)out + at, v);
            }
    }
}

#endif

/* attention.c's computation on AMX tiles. qkv: (B, T, 3C) float32, or bfloat16 where `bf16`; out: (B, T, C) of the
 * same type. Returns 0; 1 when out of memory; 2 without AMX (this CPU, this build, or Linux's grant) or where the
 * head size is not a multiple of 32 up to 128. */
int fastbark_attention_amx(const void *qkv, void *out, int64_t B, int64_t T, int64_t C, int64_t H, int causal,
                           int bf16, int threads) {
#if FASTBARK_AMX
    const int64_t hd = C / H, Tp = round_up(T, BLOCK), blocks = Tp / BLOCK;
    if (hd % 32 || hd > 128 || hd * H != C || !fastbark_amx_ready()) return 2;
    const size_t head_bytes = (size_t)(Tp * hd * 2);  /* a head's packed keys, and again its values */
    const size_t work = (size_t)(2 * (hd / 32) * TILE_BYTES + BLOCK * Tp * 2 + BLOCK * Tp * 4 + BLOCK * BLOCK * 4);
    uint8_t *packs = scratch_bytes(0, (size_t)(B * H) * 2 * head_bytes);
    if (!packs) return 1;
    int failed = 0;
    const float scale = 1.0f / sqrtf((float)hd);
    #pragma omp parallel num_threads(threads) reduction(|: failed)
    {
        #pragma omp for schedule(static)
        for (int64_t u = 0; u < B * H; u++) {
            const int64_t at = (u / H) * T * 3 * C + (u % H) * hd;  /* (b, t = 0, q of head h) */
            amx_pack_head(qkv, bf16, at + C, at + 2 * C, 3 * C, T, hd, packs + u * 2 * head_bytes,
                          packs + (u * 2 + 1) * head_bytes);
        }
        uint8_t *mine = scratch_bytes(1, work);
        if (!mine) failed = 1;
        else configure_tiles();
        /* causal blocks cost more the later they come: interleave them over the threads */
        #pragma omp for schedule(static, 1)
        for (int64_t w = 0; w < B * H * blocks; w++) {
            if (!mine) continue;
            const int64_t u = w / blocks, b = u / H, h = u % H;
            amx_attend_block(qkv, bf16, b * T * 3 * C + h * hd, 3 * C, packs + u * 2 * head_bytes,
                             packs + (u * 2 + 1) * head_bytes, (w % blocks) * BLOCK, T, causal, hd, scale, mine, out,
                             b * T * C + h * hd, C);
        }
        if (mine) _tile_release();
    }
    return failed;
#else
    (void)qkv; (void)out; (void)B; (void)T; (void)C; (void)H; (void)causal; (void)bf16; (void)threads;
    return 2;
#endif
}
