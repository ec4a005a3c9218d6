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
#else
#define FASTBARK_AMX 0
#endif

#endif
