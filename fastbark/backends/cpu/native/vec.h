/* A 16-float vector for the float32 kernels (gemv.c, decode_step.c): one AVX-512 register, or two
 * AVX2 registers. GCC keeps a 64-byte vector type on the stack when the CPU has no 64-byte registers,
 * which made these kernels ~3-6x slower on AVX2 (RESULTS.md section 22). Lane for lane the arithmetic
 * is the same in both builds, so they give the same bits. */
#ifndef FASTBARK_VEC_H
#define FASTBARK_VEC_H

#include <string.h>

typedef float v8 __attribute__((vector_size(32)));

#if defined(__AVX512F__)
typedef float v16 __attribute__((vector_size(64)));
static inline v16 load(const float *p) { v16 v; memcpy(&v, p, sizeof v); return v; }
static inline v16 zero(void) { return (v16){0}; }
static inline v16 madd(v16 acc, v16 a, v16 b) { return acc + a * b; }
static inline v8 fold(v16 a) {  /* lanes 0-7 + lanes 8-15 */
    v8 lo, hi;
    memcpy(&lo, &a, sizeof lo);
    memcpy(&hi, (const char *)&a + sizeof lo, sizeof hi);
    return lo + hi;
}
static inline void lanes(v16 a, float t[16]) { memcpy(t, &a, sizeof a); }
#else
typedef struct { v8 lo, hi; } v16;
static inline v16 load(const float *p) { v16 v; memcpy(&v.lo, p, sizeof v.lo); memcpy(&v.hi, p + 8, sizeof v.hi); return v; }
static inline v16 zero(void) { return (v16){{0}, {0}}; }
static inline v16 madd(v16 acc, v16 a, v16 b) { return (v16){acc.lo + a.lo * b.lo, acc.hi + a.hi * b.hi}; }
static inline v8 fold(v16 a) { return a.lo + a.hi; }
static inline void lanes(v16 a, float t[16]) { memcpy(t, &a.lo, sizeof a.lo); memcpy(t + 8, &a.hi, sizeof a.hi); }
#endif

#endif
