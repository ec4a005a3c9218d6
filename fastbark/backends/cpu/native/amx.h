/* What amx.c's products and attention.c's tile attention share: the tiles' geometry, the request for the tiles'
 * state, their configuration (every tile 16 rows of 64 bytes) and per-thread scratch memory kept between calls.
 *
 * FASTBARK_AMX is 1 where the compiler targets AMX-INT8, AMX-BF16 and AVX512-BF16 on Linux (-march=native on such a
 * CPU), else 0 and only the geometry is defined.
 */
#ifndef FASTBARK_AMX_H
#define FASTBARK_AMX_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { TILE_BYTES = 1024, TILE_ROWS = 16, ROW_BYTES = 64, LANE = 4, BLOCK = 32 };

static inline int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

#if defined(__AMX_TILE__) && defined(__AMX_INT8__) && defined(__AMX_BF16__) && defined(__AVX512BF16__) && \
    defined(__AVX512BW__) && defined(__linux__)
#define FASTBARK_AMX 1
#include <immintrin.h>
#include <pthread.h>

int fastbark_amx_ready(void);  /* amx.c: 1 when Linux granted this process the tiles (asked once) */

/* Each calling thread's scratch memory, SCRATCH_SLOTS buffers a thread (one for what a call shares over its
 * threads, one for what each thread works in), grown as needed and kept until the thread ends: fresh memory at every
 * call cost a page fault a page (1 ms for the 3 MB of a 1024 x 3072 x, as much as the product). Each file that
 * includes this has buffers of its own. */
enum { SCRATCH_SLOTS = 2 };
typedef struct { uint8_t *bytes[SCRATCH_SLOTS]; size_t size[SCRATCH_SLOTS]; } scratch;
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_free(void *p) {
    scratch *s = p;
    for (int i = 0; i < SCRATCH_SLOTS; i++) free(s->bytes[i]);
    free(s);
}
static void scratch_key_make(void) { pthread_key_create(&scratch_key, scratch_free); }

/* `size` bytes (64-byte aligned) of this thread's buffer `slot`, or NULL when out of memory. */
static inline uint8_t *scratch_bytes(int slot, size_t size) {
    pthread_once(&scratch_once, scratch_key_make);
    scratch *s = pthread_getspecific(scratch_key);
    if (!s) {
        if (!(s = calloc(1, sizeof *s))) return NULL;
        if (pthread_setspecific(scratch_key, s)) { free(s); return NULL; }
    }
    if (s->size[slot] < size) {
        free(s->bytes[slot]);
        s->size[slot] = 0;
        if (!(s->bytes[slot] = aligned_alloc(64, (size + 63) / 64 * 64))) return NULL;
        s->size[slot] = size;
    }
    return s->bytes[slot];
}

/* Every one of the 8 tiles: 16 rows of 64 bytes. */
static inline void configure_tiles(void) {
    struct { uint8_t palette, start_row, reserved[14]; uint16_t colsb[16]; uint8_t rows[16]; } cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) { cfg.rows[t] = TILE_ROWS; cfg.colsb[t] = ROW_BYTES; }
    _tile_loadconfig(&cfg);
}
/* The 16 x 16 four-byte values of r transposed in place: r[i] lane j <- r[j] lane i (64 shuffles). */
static inline void transpose16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {  /* per 128-bit lane L: rows i, i + 1 of elements 4L, 4L + 1 | 4L + 2, 4L + 3 */
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {  /* r[i + c], lane L: rows i..i+3 of element 4L + c */
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int c = 0; c < 4; c++) {  /* element 4L + c: lane L of r[c], r[4 + c], r[8 + c], r[12 + c] */
        const __m512i v0 = _mm512_shuffle_i32x4(r[c], r[4 + c], 0x44), v1 = _mm512_shuffle_i32x4(r[c], r[4 + c], 0xee);
        const __m512i w0 = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0x44);
        const __m512i w1 = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0xee);
        t[c] = _mm512_shuffle_i32x4(v0, w0, 0x88);
        t[4 + c] = _mm512_shuffle_i32x4(v0, w0, 0xdd);
        t[8 + c] = _mm512_shuffle_i32x4(v1, w1, 0x88);
        t[12 + c] = _mm512_shuffle_i32x4(v1, w1, 0xdd);
    }
    memcpy(r, t, sizeof t);
}
#else
#define FASTBARK_AMX 0
#endif

#endif
