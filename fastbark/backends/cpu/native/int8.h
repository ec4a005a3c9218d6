/* The int8 mode's two shared pieces, for gemv.c and decode_step.c: one row's quantisation and one
 * int8 dot product. See gemv.c for the arithmetic. */
#ifndef FASTBARK_INT8_H
#define FASTBARK_INT8_H

#include <math.h>
#include <stdint.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

/* q_biased (x + 128 as unsigned bytes, for VNNI) may be NULL. The vector loops do the scalar loop's
 * arithmetic on 16 floats at once (max is exact; a true division; round half to even), so their
 * bytes are the same. */
static inline void quantize_row(const float *x, int64_t K, int8_t *q, uint8_t *q_biased, float *scale) {
    float amax = 0.0f;
    int64_t k = 0;
#if defined(__AVX512F__)
    __m512 top = _mm512_setzero_ps();
    for (; k + 16 <= K; k += 16) top = _mm512_max_ps(top, _mm512_abs_ps(_mm512_loadu_ps(x + k)));
    amax = _mm512_reduce_max_ps(top);
#endif
    for (; k < K; k++) amax = fmaxf(amax, fabsf(x[k]));
    float s = fmaxf(amax, 1e-12f) / 127.0f;
    *scale = s;
    k = 0;
#if defined(__AVX512F__)
    const __m512 vs = _mm512_set1_ps(s);
    for (; k + 16 <= K; k += 16) {
        const __m512i v = _mm512_cvtps_epi32(_mm512_roundscale_ps(_mm512_div_ps(_mm512_loadu_ps(x + k), vs),
                                                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        _mm_storeu_si128((__m128i *)(q + k), _mm512_cvtepi32_epi8(v));
        if (q_biased) _mm_storeu_si128((__m128i *)(q_biased + k), _mm512_cvtepi32_epi8(_mm512_add_epi32(v, _mm512_set1_epi32(128))));
    }
#endif
    for (; k < K; k++) {
        int v = (int)nearbyintf(x[k] / s);  /* the default rounding mode: half to even, as torch.round */
        q[k] = (int8_t)v;
        if (q_biased) q_biased[k] = (uint8_t)(v + 128);
    }
}

static inline int32_t dot_s8(const int8_t *x, const uint8_t *x_biased, const int8_t *w, int32_t w_sum, int64_t K) {
    int64_t k = 0;
    int32_t s = 0;
#if defined(__AVX512VNNI__) && defined(__AVX512F__)
    __m512i acc = _mm512_setzero_si512();
    for (; k + 64 <= K; k += 64)
        acc = _mm512_dpbusd_epi32(acc, _mm512_loadu_si512(x_biased + k), _mm512_loadu_si512(w + k));
    s = _mm512_reduce_add_epi32(acc) - 128 * w_sum;  /* sum (x + 128) w - 128 sum w = sum x w, exactly */
    /* the tail below runs on x itself, so take its share of the correction back */
    for (int64_t j = k; j < K; j++) s += 128 * w[j];
#else
    (void)x_biased; (void)w_sum;
#endif
    for (; k < K; k++) s += (int32_t)x[k] * (int32_t)w[k];
    return s;
}

#endif
