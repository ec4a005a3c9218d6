/* The int8 mode's two shared pieces, for gemv.c and decode_step.c: one row's quantisation and one
 * int8 dot product. See gemv.c for the arithmetic. */
#ifndef FASTBARK_INT8_H
#define FASTBARK_INT8_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#elif defined(__ARM_NEON)
#include <arm_neon.h>
#endif

/* Besides x itself, a dot product reads one more byte per element of x ("aux", from quantize_row): x + 128
 * as unsigned bytes where the build has a byte dot product (vpdpbusd multiplies unsigned by signed bytes):
 * AVX512-VNNI (S8_VNNI 512) or, on AVX2 CPUs such as Intel's laptop cores since Alder Lake, AVX-VNNI (S8_VNNI
 * 256); |x| otherwise (AVX2's vpmaddubsw takes |x| as its unsigned side: made once per row, not once per row
 * of w). */
#if defined(__AVX512VNNI__) && defined(__AVX512F__)
#define S8_VNNI 512
#elif defined(__AVXVNNI__) && defined(__AVX2__)
#define S8_VNNI 256
#else
#define S8_VNNI 0
#endif

/* aux may be NULL. The vector loops do the scalar loop's arithmetic on 16 floats at once (max is exact; x / s
 * correctly rounded; round half to even), so their bytes are the same. x / s without a division (Markstein's
 * theorem): with r = 1 / s correctly rounded and y = x r (within an ulp of x / s), x - y s is exact in one FMA and
 * y + (x - y s) r rounds to x / s correctly rounded, the division's own result, for x / s in float32's normal range
 * (|x / s| <= 127 here; smaller values round to 0 either way). A long product's rows were quantised at ~0.37 ns a
 * value with the division, ~0.28 ns so (one Xeon thread, 1024 x 3072, RESULTS.md section 60). Rows of finite values
 * only: torch's amax keeps a NaN, maxps and fmaxf drop it (a model whose activations hold NaN has failed before
 * this). */
static inline void quantize_row(const float *x, int64_t K, int8_t *q, uint8_t *aux, float *scale) {
    float amax = 0.0f;
    int64_t k = 0;
#if defined(__AVX512F__)
    __m512 top = _mm512_setzero_ps();
    for (; k + 16 <= K; k += 16) top = _mm512_max_ps(top, _mm512_abs_ps(_mm512_loadu_ps(x + k)));
    amax = _mm512_reduce_max_ps(top);
#elif defined(__AVX2__)
    const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));  /* clears the sign bit */
    __m256 top = _mm256_setzero_ps();
    for (; k + 8 <= K; k += 8) top = _mm256_max_ps(top, _mm256_and_ps(_mm256_loadu_ps(x + k), magnitude));
    float lanes[8];
    _mm256_storeu_ps(lanes, top);
    for (int i = 0; i < 8; i++) amax = fmaxf(amax, lanes[i]);  /* max is exact: any order gives the same */
#endif
    for (; k < K; k++) amax = fmaxf(amax, fabsf(x[k]));
    float s = fmaxf(amax, 1e-12f) / 127.0f;
    *scale = s;
    k = 0;
#if defined(__AVX512F__)
    const __m512 vs = _mm512_set1_ps(s), vr = _mm512_set1_ps(1.0f / s);
    for (; k + 16 <= K; k += 16) {
        const __m512 xv = _mm512_loadu_ps(x + k), y = _mm512_mul_ps(xv, vr);
        const __m512 quotient = _mm512_fmadd_ps(_mm512_fnmadd_ps(y, vs, xv), vr, y);  /* x / s, as divided */
        const __m512i v = _mm512_cvtps_epi32(_mm512_roundscale_ps(quotient,
                                                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        _mm_storeu_si128((__m128i *)(q + k), _mm512_cvtepi32_epi8(v));
        if (aux) _mm_storeu_si128((__m128i *)(aux + k), _mm512_cvtepi32_epi8(S8_VNNI ? _mm512_add_epi32(v, _mm512_set1_epi32(128))
                                                                               : _mm512_abs_epi32(v)));
    }
#elif defined(__AVX2__)
    const __m256 vs = _mm256_set1_ps(s);
#if defined(__FMA__)
    const __m256 vr = _mm256_set1_ps(1.0f / s);
#endif
    for (; k + 8 <= K; k += 8) {
        const __m256 xv = _mm256_loadu_ps(x + k);
#if defined(__FMA__)
        const __m256 y = _mm256_mul_ps(xv, vr);
        const __m256 quotient = _mm256_fmadd_ps(_mm256_fnmadd_ps(y, vs, xv), vr, y);  /* x / s, as divided */
#else
        const __m256 quotient = _mm256_div_ps(xv, vs);
#endif
        const __m256i v = _mm256_cvtps_epi32(_mm256_round_ps(quotient, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        /* 8 int32 in [-127, 127] -> 8 int8: the saturating packs change nothing in that range */
        const __m128i v16 = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        const __m128i v8 = _mm_packs_epi16(v16, v16);
        _mm_storel_epi64((__m128i *)(q + k), v8);
        if (aux) {
#if S8_VNNI
            const __m128i b16 = _mm_add_epi16(v16, _mm_set1_epi16(128));  /* [1, 255]: unsigned packing */
            _mm_storel_epi64((__m128i *)(aux + k), _mm_packus_epi16(b16, b16));
#else
            _mm_storel_epi64((__m128i *)(aux + k), _mm_abs_epi8(v8));
#endif
        }
    }
#endif
    for (; k < K; k++) {
        int v = (int)nearbyintf(x[k] / s);  /* the default rounding mode: half to even, as torch.round */
        q[k] = (int8_t)v;
        if (aux) aux[k] = (uint8_t)(S8_VNNI ? v + 128 : abs(v));
    }
}

/* How far ahead of its reads (bytes) the dot products ask for w; 0: never. A decode step's rows are short
 * (768 bytes in bark-small), and with the hardware prefetcher alone the int8 products read at ~70% of the
 * machine's read rate. 2 KB ahead was the best of 0.5-4 KB on an AMD Zen 3; with it and |x| made once per row
 * (aux), the int8 semantic stage of a 256-token clip ran ~15% faster and the coarse stage ~7% (RESULTS.md
 * section 46). That is the default; a build may set FASTBARK_S8_PREFETCH, and tuning.py keeps whichever of a few
 * distances measured fastest on the machine at hand (the sums are exact: the same bits). A prefetch past the end
 * of w is a hint, never a fault. */
#ifdef FASTBARK_S8_PREFETCH
enum { S8_PREFETCH = FASTBARK_S8_PREFETCH };
#else
enum { S8_PREFETCH = 2048 };
#endif

static inline int32_t dot_s8(const int8_t *x, const uint8_t *aux, const int8_t *w, int32_t w_sum, int64_t K) {
    int64_t k = 0;
    int32_t s = 0;
#if S8_VNNI == 512
    __m512i acc = _mm512_setzero_si512();
    for (; k + 64 <= K; k += 64) {
        if (S8_PREFETCH > 0) _mm_prefetch((const char *)(w + k + S8_PREFETCH), _MM_HINT_T0);
        acc = _mm512_dpbusd_epi32(acc, _mm512_loadu_si512(aux + k), _mm512_loadu_si512(w + k));
    }
    s = _mm512_reduce_add_epi32(acc) - 128 * w_sum;  /* sum (x + 128) w - 128 sum w = sum x w, exactly */
    /* the tail below runs on x itself, so take its share of the correction back */
    for (int64_t j = k; j < K; j++) s += 128 * w[j];
#elif S8_VNNI == 256
    /* AVX-VNNI: the same dot product on 256-bit vectors (one instruction per 32 bytes, where the AVX2 loop
     * below takes four), 64 bytes a step in two accumulators, with the AVX2 loop's prefetch. */
    __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
    for (; k + 64 <= K; k += 64) {
        if (S8_PREFETCH > 0) _mm_prefetch((const char *)(w + k + S8_PREFETCH), _MM_HINT_T0);
        acc0 = _mm256_dpbusd_avx_epi32(acc0, _mm256_loadu_si256((const __m256i *)(aux + k)),
                                       _mm256_loadu_si256((const __m256i *)(w + k)));
        acc1 = _mm256_dpbusd_avx_epi32(acc1, _mm256_loadu_si256((const __m256i *)(aux + k + 32)),
                                       _mm256_loadu_si256((const __m256i *)(w + k + 32)));
    }
    for (; k + 32 <= K; k += 32)
        acc0 = _mm256_dpbusd_avx_epi32(acc0, _mm256_loadu_si256((const __m256i *)(aux + k)),
                                       _mm256_loadu_si256((const __m256i *)(w + k)));
    const __m256i acc = _mm256_add_epi32(acc0, acc1);
    __m128i h = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4e));  /* lanes 2,3 onto 0,1 */
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0xb1));  /* lane 1 onto 0 */
    s = _mm_cvtsi128_si32(h) - 128 * w_sum;  /* sum (x + 128) w - 128 sum w = sum x w, exactly */
    for (int64_t j = k; j < K; j++) s += 128 * w[j];  /* the tail below runs on x itself */
#elif defined(__AVX2__)
    /* No byte dot product on AVX2, but vpmaddubsw multiplies unsigned by signed bytes and adds pairs into
     * int16, saturating. With |x| as the unsigned side and w carrying x's sign (vpsignb), every pair is at
     * most 2 * 127 * 127 = 32258 < 32767: exact. vpmaddwd by ones then widens the pairs into int32. Integer
     * sums do not depend on their order, so the bits are VNNI's (and the scalar loop's). */
    (void)w_sum;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
    for (; k + 64 <= K; k += 64) {
        if (S8_PREFETCH > 0) _mm_prefetch((const char *)(w + k + S8_PREFETCH), _MM_HINT_T0);
        const __m256i p0 = _mm256_maddubs_epi16(_mm256_loadu_si256((const __m256i *)(aux + k)),
            _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(w + k)), _mm256_loadu_si256((const __m256i *)(x + k))));
        const __m256i p1 = _mm256_maddubs_epi16(_mm256_loadu_si256((const __m256i *)(aux + k + 32)),
            _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(w + k + 32)),
                             _mm256_loadu_si256((const __m256i *)(x + k + 32))));
        acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(p0, ones));
        acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(p1, ones));
    }
    for (; k + 32 <= K; k += 32) {
        const __m256i p0 = _mm256_maddubs_epi16(_mm256_loadu_si256((const __m256i *)(aux + k)),
            _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(w + k)), _mm256_loadu_si256((const __m256i *)(x + k))));
        acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(p0, ones));
    }
    const __m256i acc = _mm256_add_epi32(acc0, acc1);
    __m128i h = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4e));  /* lanes 2,3 onto 0,1 */
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0xb1));  /* lane 1 onto 0 */
    s = _mm_cvtsi128_si32(h);
#elif defined(__ARM_NEON) && defined(__ARM_FEATURE_DOTPROD)
    /* 64-bit ARM with Armv8.2's byte dot product (SDOT: Graviton 2-4, Ampere, Raspberry Pi 5, Apple M): four
     * signed byte products summed into each int32 lane, exact, 32 bytes a step in two accumulators. */
    (void)aux; (void)w_sum;
    int32x4_t acc0 = vdupq_n_s32(0), acc1 = vdupq_n_s32(0);
    for (; k + 32 <= K; k += 32) {
        if (S8_PREFETCH > 0) __builtin_prefetch(w + k + S8_PREFETCH, 0, 3);
        acc0 = vdotq_s32(acc0, vld1q_s8(x + k), vld1q_s8(w + k));
        acc1 = vdotq_s32(acc1, vld1q_s8(x + k + 16), vld1q_s8(w + k + 16));
    }
    s = vaddvq_s32(vaddq_s32(acc0, acc1));
#elif defined(__ARM_NEON)
    /* 64-bit ARM without it (Raspberry Pi 4, Graviton 1): widening byte products (at most 127 * 127, exact in
     * int16) added pairwise into int32 lanes. */
    (void)aux; (void)w_sum;
    int32x4_t acc = vdupq_n_s32(0);
    for (; k + 16 <= K; k += 16) {
        if (S8_PREFETCH > 0) __builtin_prefetch(w + k + S8_PREFETCH, 0, 3);
        const int8x16_t a = vld1q_s8(x + k), b = vld1q_s8(w + k);
        acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(b)));
        acc = vpadalq_s16(acc, vmull_high_s8(a, b));
    }
    s = vaddvq_s32(acc);
#else
    (void)aux; (void)w_sum;
#endif
    for (; k < K; k++) s += (int32_t)x[k] * (int32_t)w[k];
    return s;
}

/* y = acc * (x_scale * w_scale), then + bias[n]: two roundings, never fused (callers are compiled with
 * fp-contract=off), as int8.py's torch path computes it. gemv.c's and amx.c's epilogues. */
static inline float rescaled(float acc, float x_scale, float w_scale, const float *bias, int64_t n) {
    const float v = acc * (x_scale * w_scale);
    return bias ? v + bias[n] : v;
}

#endif
