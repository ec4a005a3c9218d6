/* bfloat16 for the bfloat16 mode's decode step (decode_step.c) and its product in gemv.c (what tuning.py times):
 * rounding to bfloat16 as torch does, widening back, and the dot product of two bfloat16 rows in float32.
 *
 * How far ahead the dot product asks for w: BF16_PREFETCH bytes. On the Xeon of RESULTS.md section 58 the step's
 * bfloat16 products streamed their weights at 60-65% of the machine's read rate without it, 73-76% with 2 KB
 * (one stream a thread, the hardware prefetcher alone fell behind). A build may set FASTBARK_BF16_PREFETCH
 * (tuning.py times 2048, 0, 1024 and 4096; 0: none). A prefetch past the end of w is a hint, never a fault. */
#ifndef FASTBARK_BF16_H
#define FASTBARK_BF16_H

#include <stdint.h>
#include <string.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#ifdef FASTBARK_BF16_PREFETCH
enum { BF16_PREFETCH = FASTBARK_BF16_PREFETCH };
#else
enum { BF16_PREFETCH = 2048 };
#endif

static inline uint16_t to_bf16(float f) {  /* round to nearest even, as torch does (finite values) */
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float from_bf16(uint16_t h) {
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* sum_k x[k] w[k] over bfloat16 x and w, in float32 (each product exact): on AVX512-BF16 32 products per
 * instruction; on AVX2, 16 values per step widened by shifts (the even-numbered ones of each pair by a shift left,
 * the odd ones by masking their pair's low half) into two FMA accumulators, summed in a fixed order; then a fixed
 * tail. Without either, in order. */
static inline float dot_bf16(const uint16_t *x, const uint16_t *w, int64_t K) {
    int64_t k = 0;
    float s = 0.0f;
#if defined(__AVX512BF16__) && defined(__AVX512F__)
    __m512 acc = _mm512_setzero_ps();
    for (; k + 32 <= K; k += 32) {
        if (BF16_PREFETCH > 0) _mm_prefetch((const char *)(w + k) + BF16_PREFETCH, _MM_HINT_T0);
        acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(x + k), (__m512bh)_mm512_loadu_si512(w + k));
    }
    s = _mm512_reduce_add_ps(acc);
#elif defined(__AVX2__) && defined(__FMA__)
    const __m256i high = _mm256_set1_epi32((int)0xFFFF0000u);
    __m256 even = _mm256_setzero_ps(), odd = _mm256_setzero_ps();
    for (; k + 16 <= K; k += 16) {
        if (BF16_PREFETCH > 0) _mm_prefetch((const char *)(w + k) + BF16_PREFETCH, _MM_HINT_T0);
        const __m256i xv = _mm256_loadu_si256((const __m256i *)(x + k)), wv = _mm256_loadu_si256((const __m256i *)(w + k));
        even = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(xv, 16)),
                               _mm256_castsi256_ps(_mm256_slli_epi32(wv, 16)), even);
        odd = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(xv, high)),
                              _mm256_castsi256_ps(_mm256_and_si256(wv, high)), odd);
    }
    float t[8];
    _mm256_storeu_ps(t, _mm256_add_ps(even, odd));
    s = ((t[0] + t[4]) + (t[2] + t[6])) + ((t[1] + t[5]) + (t[3] + t[7]));
#endif
    for (; k < K; k++) s += from_bf16(x[k]) * from_bf16(w[k]);
    return s;
}

#endif
