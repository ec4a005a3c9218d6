/* The int4 mode's dot product, for gemv.c (one product per call) and decode_step.c (the whole step):
 * int4 weights in groups of Q4_GROUP along K, each group with its own float32 scale d_g, against a row
 * quantised to int8 as the int8 mode does (int8.h's quantize_row).
 *
 * Layout (backends/cpu/int4.py packs it): row n of the weight is ceil(K / 64) blocks of 32 bytes; byte
 * j of block b holds u = q + 8 (q in [-8, 7]) of weight k = 64b + j in its low nibble and of weight
 * k = 64b + 32 + j in its high one: each nibble plane of a block is one whole group, in x's order. The
 * scales are (N, ceil(K / 32)) float32.
 *
 * Arithmetic: vpmaddubsw multiplies the unsigned nibbles u by x's signed bytes (pairs at most
 * 2 * 15 * 127, exact in int16), vpmaddwd widens the pairs to int32, and sum u x = sum q x + 8 sum x;
 * the 8 sum x part is taken off once per row, from each group's sum of x (q4_group_sums), weighted by
 * the same scales. Each group's integer sums are exact; they are scaled and summed in float32 in one
 * fixed order, so a row gets the same bits alone as in a batch, on any thread count.
 */
#ifndef FASTBARK_INT4_H
#define FASTBARK_INT4_H

#include <stdint.h>
#if defined(__AVX2__)
#include <immintrin.h>
#elif defined(__ARM_NEON) && defined(__ARM_FEATURE_DOTPROD)
#include <arm_neon.h>
#endif

enum { Q4_GROUP = 32, Q4_BLOCK = 64, Q4_BLOCK_BYTES = 32 };

/* How far ahead (bytes) the int4 dot products ask for w; 0: never, the default, which whole clips on an AMD Zen 3
 * could not tell from 2 KB (RESULTS.md section 46). A build may set FASTBARK_Q4_PREFETCH: tuning.py times 0, 1 and
 * 2 KB on the products alone, where 2 KB read 14-15% faster than none on that machine (section 54). */
#ifdef FASTBARK_Q4_PREFETCH
enum { Q4_PREFETCH = FASTBARK_Q4_PREFETCH };
#else
enum { Q4_PREFETCH = 0 };
#endif

static inline int64_t q4_groups(int64_t K) { return (K + Q4_GROUP - 1) / Q4_GROUP; }
static inline int64_t q4_row_bytes(int64_t K) { return (K + Q4_BLOCK - 1) / Q4_BLOCK * Q4_BLOCK_BYTES; }

/* xsum[g] = sum of the row's int8 values over group g, as float (exact: at most 32 * 127). */
static inline void q4_group_sums(const int8_t *x, int64_t K, float *xsum) {
    for (int64_t g = 0; g < q4_groups(K); g++) {
        int32_t s = 0;
        for (int64_t k = g * Q4_GROUP; k < K && k < (g + 1) * Q4_GROUP; k++) s += x[k];
        xsum[g] = (float)s;
    }
}

/* q of weight k of a packed row. */
static inline int q4_at(const uint8_t *w, int64_t k) {
    const uint8_t byte = w[k / Q4_BLOCK * Q4_BLOCK_BYTES + k % Q4_BLOCK_BYTES];
    return (k % Q4_BLOCK < Q4_BLOCK_BYTES ? byte & 15 : byte >> 4) - 8;
}

/* sum_g d[g] * (x . q)_g over the groups of one packed weight row (w, d); xsum: the row's q4_group_sums. */
static inline float dot_q4(const int8_t *x, const float *xsum, const uint8_t *w, const float *d, int64_t K) {
    int64_t g = 0;  /* groups done by the vector loop */
    float s = 0.0f;
#if defined(__AVX2__)
    const int64_t blocks = K / Q4_BLOCK;
    const __m256i low = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (int64_t b = 0; b < blocks; b++) {
        if (Q4_PREFETCH > 0) __builtin_prefetch(w + b * Q4_BLOCK_BYTES + Q4_PREFETCH, 0, 3);
        const __m256i packed = _mm256_loadu_si256((const __m256i *)(w + b * Q4_BLOCK_BYTES));
        const __m256i u0 = _mm256_and_si256(packed, low), u1 = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low);
        const __m256i x0 = _mm256_loadu_si256((const __m256i *)(x + b * Q4_BLOCK));
        const __m256i x1 = _mm256_loadu_si256((const __m256i *)(x + b * Q4_BLOCK + Q4_GROUP));
        const __m256 s0 = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(u0, x0), ones));
        const __m256 s1 = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(u1, x1), ones));
        acc0 = _mm256_add_ps(acc0, _mm256_mul_ps(s0, _mm256_set1_ps(d[2 * b])));
        acc1 = _mm256_add_ps(acc1, _mm256_mul_ps(s1, _mm256_set1_ps(d[2 * b + 1])));
    }
    g = 2 * blocks;
    float t[8];
    _mm256_storeu_ps(t, _mm256_add_ps(acc0, acc1));
    /* sum_g d_g sum x over the same groups: the 8 sum x the unsigned nibbles added */
    __m256 o = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= g; i += 8) o = _mm256_add_ps(o, _mm256_mul_ps(_mm256_loadu_ps(d + i), _mm256_loadu_ps(xsum + i)));
    float u[8];
    _mm256_storeu_ps(u, o);
    float offset = ((u[0] + u[4]) + (u[2] + u[6])) + ((u[1] + u[5]) + (u[3] + u[7]));
    for (; i < g; i++) offset += d[i] * xsum[i];
    s = (((t[0] + t[4]) + (t[2] + t[6])) + ((t[1] + t[5]) + (t[3] + t[7]))) - 8.0f * offset;
#elif defined(__ARM_NEON) && defined(__ARM_FEATURE_DOTPROD)
    /* 64-bit ARM with SDOT: the AVX2 loop's sums in its lanes and order. A nibble u is at most 15, so signed
     * byte products are exact; SDOT lane i sums bytes 4i..4i+3, as vpmaddubsw then vpmaddwd do, and the 8 float
     * lanes of acc0 / acc1 are two registers each (lanes 0-3, 4-7), so the bits can be the AVX2 build's. */
    const int64_t blocks = K / Q4_BLOCK;
    const uint8x16_t low = vdupq_n_u8(15);
    float32x4_t acc0[2] = {vdupq_n_f32(0), vdupq_n_f32(0)}, acc1[2] = {vdupq_n_f32(0), vdupq_n_f32(0)};
    for (int64_t b = 0; b < blocks; b++) {
        if (Q4_PREFETCH > 0) __builtin_prefetch(w + b * Q4_BLOCK_BYTES + Q4_PREFETCH, 0, 3);
        const uint8_t *wb = w + b * Q4_BLOCK_BYTES;
        const int8_t *xb = x + b * Q4_BLOCK;
        for (int h = 0; h < 2; h++) {  /* bytes 16h..16h+15 of the block: lanes 4h..4h+3 */
            const uint8x16_t packed = vld1q_u8(wb + 16 * h);
            const int8x16_t u0 = vreinterpretq_s8_u8(vandq_u8(packed, low));
            const int8x16_t u1 = vreinterpretq_s8_u8(vshrq_n_u8(packed, 4));
            const float32x4_t s0 = vcvtq_f32_s32(vdotq_s32(vdupq_n_s32(0), u0, vld1q_s8(xb + 16 * h)));
            const float32x4_t s1 = vcvtq_f32_s32(vdotq_s32(vdupq_n_s32(0), u1, vld1q_s8(xb + Q4_GROUP + 16 * h)));
            acc0[h] = vaddq_f32(acc0[h], vmulq_f32(s0, vdupq_n_f32(d[2 * b])));
            acc1[h] = vaddq_f32(acc1[h], vmulq_f32(s1, vdupq_n_f32(d[2 * b + 1])));
        }
    }
    g = 2 * blocks;
    float t[8];
    vst1q_f32(t, vaddq_f32(acc0[0], acc1[0]));
    vst1q_f32(t + 4, vaddq_f32(acc0[1], acc1[1]));
    float32x4_t o[2] = {vdupq_n_f32(0), vdupq_n_f32(0)};
    int64_t i = 0;
    for (; i + 8 <= g; i += 8)
        for (int h = 0; h < 2; h++)
            o[h] = vaddq_f32(o[h], vmulq_f32(vld1q_f32(d + i + 4 * h), vld1q_f32(xsum + i + 4 * h)));
    float u[8];
    vst1q_f32(u, o[0]);
    vst1q_f32(u + 4, o[1]);
    float offset = ((u[0] + u[4]) + (u[2] + u[6])) + ((u[1] + u[5]) + (u[3] + u[7]));
    for (; i < g; i++) offset += d[i] * xsum[i];
    s = (((t[0] + t[4]) + (t[2] + t[6])) + ((t[1] + t[5]) + (t[3] + t[7]))) - 8.0f * offset;
#else
    (void)xsum;
#endif
    for (; g < q4_groups(K); g++) {  /* the groups left: exact integer sums, one scale each */
        int32_t dot = 0;
        for (int64_t k = g * Q4_GROUP; k < K && k < (g + 1) * Q4_GROUP; k++) dot += (int32_t)x[k] * q4_at(w, k);
        s += d[g] * (float)dot;
    }
    return s;
}

#endif
