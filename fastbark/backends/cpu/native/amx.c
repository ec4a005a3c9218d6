/* Long matrix products on AMX tiles (Intel Xeon since Sapphire Rapids): the fine passes' 1024 rows, and the decode
 * stages' prefills.
 *
 * int8:     y = (x_q @ w_q^T) * (x_scale * w_scale) + bias, the int8 mode's product (int8.py), each row of x
 *           quantised by quantize_row (int8.h). Its int32 sums are exact in any order, so its bits are those of
 *           the torch._int_mm route (checked in int8.py when the library loads).
 * bfloat16: y = x @ w^T + bias, float32 sums rounded once to bfloat16 (amx.py; sums in another order than
 *           oneDNN's, so its values, not its bits, are checked).
 * int4:     the bfloat16 product over an int4 weight (int4.h) expanded into bfloat16 tiles at each call, never kept
 *           (int4.py's bfloat16 route: q * d rounded once to bfloat16).
 *
 * Layout. A tile is 16 rows of 64 bytes. TDPBSSD (int8) and TDPBF16PS (bfloat16) take a tile of x (16 rows of
 * DEPTH values along K) and a tile of w in lanes of 4 bytes: its row r holds, for each of 16 outputs n, the
 * 4 bytes of w[n, r * GROUP ...] (GROUP = 4 int8 or 2 bfloat16). Weights are packed into those tiles once
 * (fastbark_amx_pack; N rounded up to 32, K to DEPTH, with zeros, which add nothing); x is packed at each call
 * into whole tiles [M/16][K/DEPTH][16][64] (contiguous tiles load faster than rows of x with a stride).
 * Blocking: a 32 x 32 block of y is 2 x 2 accumulator tiles over 2 tiles of x and 2 of w; a thread takes
 * ROW_BLOCKS blocks of rows (256 rows of x, in L2) against one pair of w's tiles, K_TILES tiles of K at a time (in
 * L1). On the Xeon of RESULTS.md section 57, 2 threads: int8 3.0-4.0 TOPS (torch._int_mm 1.6-3.1), bfloat16 1.7-2.2
 * TFLOP/s (F.linear 0.8-1.9).
 * Plain weights (the _plain entry points: the decode stages', which keep only the layout their one-call step reads):
 * the roles swap. w's rows are the A operand as they lie in memory, x's rows are packed at each call as the B operand
 * (a 16 x 16 transpose of 4-byte lanes per tile), the tiles hold y^T and the epilogue transposes them back. The same
 * sums in the same order: on that Xeon (section 59) a layer's four products over 887 rows took 4.95 ms against the
 * packed weights' 4.86 (int8) and 7.32 against 7.59 (bfloat16).
 *
 * Built where the compiler targets AMX-INT8 and AMX-BF16 (-march=native on such a CPU); elsewhere the entry points
 * report that they are absent. Linux grants a process the tiles' state only on request (arch_prctl).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "amx.h"
#include "gelu.h"
#include "int4.h"
#include "int8.h"

enum { KIND_S8 = 0, KIND_BF16 = 1 };
static int64_t elem_bytes(int kind) { return kind == KIND_S8 ? 1 : 2; }
static int64_t depth(int kind) { return ROW_BYTES / elem_bytes(kind); }  /* values of K in a tile row: 64 or 32 */

/* Bytes of a packed (N, K) weight: whole pairs of tiles along N, whole tiles along K. */
int64_t fastbark_amx_packed_bytes(int kind, int64_t N, int64_t K) {
    return round_up(N, BLOCK) * round_up(K, depth(kind)) * elem_bytes(kind);
}

/* w (N, K) int8 or bfloat16 -> packed [Np/16][Kp/DEPTH][16 r][16 n][LANE bytes]. */
void fastbark_amx_pack(int kind, const void *w, void *packed, int64_t N, int64_t K) {
    const int64_t e = elem_bytes(kind), d = depth(kind), group = LANE / e, kt = round_up(K, d) / d;
    const uint8_t *src = w;
    uint8_t *dst = packed;
    memset(dst, 0, (size_t)fastbark_amx_packed_bytes(kind, N, K));
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k += group) {  /* a lane: `group` values of K, fewer at K's end */
            const int64_t tile = (n / TILE_ROWS) * kt + k / d, r = (k % d) / group;
            const int64_t at = tile * TILE_BYTES + r * ROW_BYTES + (n % TILE_ROWS) * LANE;
            memcpy(dst + at, src + (n * K + k) * e, (size_t)((k + group <= K ? group : K - k) * e));
        }
}

/* An int4 weight (int4.h's layout: packed (N, q4_row_bytes(K)), scales (N, ceil(K / 32))) as bfloat16 tiles, as
 * fastbark_amx_pack lays out a bfloat16 (N, K) weight: each weight q * d (one float32 rounding, as int4.py's
 * expansion) rounded to nearest even bfloat16 (as its bfloat16 route rounds it). A group of 32 weights is one tile's
 * depth: with AVX512-BF16 it is widened, scaled, rounded and scattered (its 16 pairs one tile row apart) at once. */
void fastbark_amx_pack_q4(const uint8_t *w, const float *w_scale, void *tiles, int64_t N, int64_t K, int threads) {
    const int64_t kt = round_up(K, 32) / 32, groups = q4_groups(K), row_bytes = q4_row_bytes(K);
    if (N % BLOCK || K % 32) memset(tiles, 0, (size_t)fastbark_amx_packed_bytes(KIND_BF16, N, K));
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const uint8_t *row = w + n * row_bytes;
        for (int64_t g = 0; g < groups; g++) {
            const float d = w_scale[n * groups + g];
            uint32_t *lane = (uint32_t *)tiles + ((n / TILE_ROWS) * kt + g) * (TILE_BYTES / 4) + n % TILE_ROWS;
#if defined(__AVX512BF16__) && defined(__AVX512F__) && defined(__AVX512BW__)
            if ((g + 1) * 32 <= K) {  /* a whole group: the 32 nibbles of one plane of its block */
                const __m256i bytes = _mm256_loadu_si256((const __m256i *)(row + g / 2 * Q4_BLOCK_BYTES));
                const __m256i u = _mm256_and_si256(g % 2 ? _mm256_srli_epi16(bytes, 4) : bytes, _mm256_set1_epi8(15));
                const __m512i eight = _mm512_set1_epi32(8);
                const __m512 lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(
                    _mm512_cvtepu8_epi32(_mm256_castsi256_si128(u)), eight)), _mm512_set1_ps(d));
                const __m512 hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(
                    _mm512_cvtepu8_epi32(_mm256_extracti128_si256(u, 1)), eight)), _mm512_set1_ps(d));
                const __m512i pairs = _mm512_inserti64x4(_mm512_castsi256_si512((__m256i)_mm512_cvtneps_pbh(lo)),
                                                         (__m256i)_mm512_cvtneps_pbh(hi), 1);  /* k = 2p, 2p + 1 */
                const __m512i rows = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
                                                                          13, 14, 15), _mm512_set1_epi32(16));
                _mm512_i32scatter_epi32(lane, rows, pairs, 4);  /* pair p: tile row p, this output's lane */
                continue;
            }
#endif
            for (int64_t k = g * 32; k < K && k < (g + 1) * 32; k++) {  /* K's last, partial group */
                const float v = (float)q4_at(row, k) * d;
                uint32_t u;
                memcpy(&u, &v, 4);
                const uint16_t h = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);  /* nearest even */
                memcpy((uint16_t *)(lane + (k % 32) / 2 * (ROW_BYTES / 4)) + k % 2, &h, 2);
            }
        }
    }
}

#if FASTBARK_AMX
#include <omp.h>
#include <sys/syscall.h>
#include <unistd.h>

enum { ROW_BLOCKS = 8 };
/* K_TILES: 8 tiles of K (512 int8, 256 bfloat16) at a time keep a pair of w's tiles (16 KB) in L1. On the Xeon
 * of RESULTS.md section 57, 8, 12 and all of K were within noise in int8; 8 was best in bfloat16 for K = 3072
 * (1.8 against 1.7 TFLOP/s). */
enum { K_TILES = 8 };
enum { ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18 };  /* Linux's arch_prctl request for the tiles */

/* 1 when this process may use the tiles (asked once), else 0. */
int fastbark_amx_ready(void) {
    static int ready = -1;
    if (ready < 0) ready = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
    return ready;
}

/* Row m of x (K values of e bytes, already int8 or bfloat16) into its packed tiles; the padding stays zero. */
static void pack_row(const uint8_t *row, int64_t K, int64_t e, int64_t kt, int64_t m, uint8_t *xp) {
    const int64_t d = ROW_BYTES / e;
    for (int64_t t = 0; t < kt; t++) {
        const int64_t n = (t + 1) * d <= K ? d : K - t * d;
        memcpy(xp + ((m / TILE_ROWS) * kt + t) * TILE_BYTES + (m % TILE_ROWS) * ROW_BYTES, row + t * d * e,
               (size_t)(n * e));
    }
}

/* Adds tiles [t0, t1) of K of one 32 x 32 block to acc (32 x 32, int32 or float32; zeros first where t0 is 0): rows
 * i of acc from the A tiles (tile t of rows 0-15 at a0 + t * a_step, of rows 16-31 at a1 + t * a_step, their rows
 * a_stride bytes apart), columns from the B tiles (packed: tile t at b0 + t * TILE_BYTES, b1 for columns 16-31).
 * Inlined with its kind a constant: the tile instructions take their registers as immediates. */
static inline __attribute__((always_inline)) void block(int kind, const uint8_t *a0, const uint8_t *a1,
                                                         int64_t a_stride, int64_t a_step, const uint8_t *b0,
                                                         const uint8_t *b1, int64_t t0, int64_t t1, void *acc) {
    uint8_t *c = acc;  /* rows of 32 four-byte sums: stride 128 bytes */
    if (t0 == 0) {
        _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    } else {
        _tile_loadd(0, c, 128); _tile_loadd(1, c + 64, 128); _tile_loadd(2, c + 16 * 128, 128);
        _tile_loadd(3, c + 16 * 128 + 64, 128);
    }
    for (int64_t t = t0; t < t1; t++) {
        _tile_loadd(4, a0 + t * a_step, a_stride);
        _tile_loadd(5, a1 + t * a_step, a_stride);
        _tile_loadd(6, b0 + t * TILE_BYTES, ROW_BYTES);
        _tile_loadd(7, b1 + t * TILE_BYTES, ROW_BYTES);
        if (kind == KIND_S8) {
            _tile_dpbssd(0, 4, 6); _tile_dpbssd(1, 4, 7); _tile_dpbssd(2, 5, 6); _tile_dpbssd(3, 5, 7);
        } else {
            _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7); _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
        }
    }
    _tile_stored(0, c, 128); _tile_stored(1, c + 64, 128); _tile_stored(2, c + 16 * 128, 128);
    _tile_stored(3, c + 16 * 128 + 64, 128);
}

/* What a block's sums become. y_s32 (int32 sums), or y_f32 (int8: rescaled as int8.py), or y_bf16 (+ bias); with
 * `gelu`, the float results through gelu.h's GELU before they are stored (the MLP's first product). */
typedef struct {
    int32_t *y_s32;
    float *y_f32;
    uint16_t *y_bf16;
    const float *x_scale, *w_scale, *bias;
    int gelu;
} epilogue;

/* 16 sums s of row m of y from column n, those outside mask k left out, as `out` says. */
__attribute__((optimize("fp-contract=off")))
static inline void finish16(const epilogue *out, __m512i s, int64_t m, int64_t n, int64_t N, __mmask16 k) {
    const int64_t at = m * N + n;
    const __m512 bias = out->bias ? _mm512_maskz_loadu_ps(k, out->bias + n) : _mm512_setzero_ps();
    if (out->y_s32) {
        _mm512_mask_storeu_epi32(out->y_s32 + at, k, s);
    } else if (out->y_f32) {  /* rescaled (int8.h), 16 at once: the same two roundings, then the bias */
        const __m512 scale = _mm512_mul_ps(_mm512_set1_ps(out->x_scale[m]), _mm512_maskz_loadu_ps(k, out->w_scale + n));
        __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(s), scale);
        if (out->bias) v = _mm512_add_ps(v, bias);
        if (out->gelu) v = (__m512)gelu_lanes((gelu_f)v);
        _mm512_mask_storeu_ps(out->y_f32 + at, k, v);
    } else {  /* float32 sums + bias, rounded to nearest even bfloat16 */
        __m512 v = _mm512_add_ps(_mm512_castsi512_ps(s), bias);
        if (out->gelu) v = (__m512)gelu_lanes((gelu_f)v);
        _mm256_mask_storeu_epi16(out->y_bf16 + at, k, (__m256i)_mm512_cvtneps_pbh(v));
    }
}

/* A 32 x 32 block of y from acc: with `transposed` acc holds y^T (rows of outputs n0.., columns of rows m0..; each
 * 16 x 16 quarter is transposed first), else y itself; the rows past M and the columns past N left out. */
__attribute__((optimize("fp-contract=off")))
static inline void finish(const epilogue *out, const void *acc, int64_t m0, int64_t n0, int64_t M, int64_t N,
                          int transposed) {
    const int64_t rows = M - m0 < BLOCK ? M - m0 : BLOCK, cols = N - n0 < BLOCK ? N - n0 : BLOCK;
    const int32_t *sums = acc;
    if (!transposed) {
        for (int64_t i = 0; i < rows; i++)
            for (int64_t j = 0; j < cols; j += 16)
                finish16(out, _mm512_load_si512(sums + i * BLOCK + j), m0 + i, n0 + j, N,
                         cols - j >= 16 ? 0xffff : (__mmask16)((1u << (cols - j)) - 1));
        return;
    }
    for (int64_t j = 0; j < cols; j += 16)  /* outputs n0 + j.. (cols: whole 16s, as the plain weights' callers ask) */
        for (int64_t i = 0; i < rows; i += 16) {  /* rows m0 + i.. */
            __m512i r[16];
            for (int64_t c = 0; c < 16; c++) r[c] = _mm512_load_si512(sums + (j + c) * BLOCK + i);  /* output j + c */
            transpose16(r);  /* r[c]: row i + c, outputs j.. */
            for (int64_t c = 0; c < 16 && i + c < rows; c++) finish16(out, r[c], m0 + i + c, n0 + j, N, 0xffff);
        }
}

/* The epilogue's output from x's tiles (Mp rows) and w's, blocks split over the threads. With `plain` (w's plain
 * (N, K) rows as the A operand, x's tiles as B: acc holds y^T), else w packed as B and x's tiles as A. A thread
 * takes ROW_BLOCKS blocks of rows against one pair of w's tiles, K_TILES of K at a time (the pair's slice stays in
 * L1), keeping the blocks' sums in between. */
static inline __attribute__((always_inline)) void products(int kind, const uint8_t *xp, const uint8_t *w, int plain,
                                                            const epilogue *out, int64_t M, int64_t N, int64_t K,
                                                            int64_t kt, int threads) {
    const int64_t row_blocks = round_up(M, BLOCK) / BLOCK, col_blocks = round_up(N, BLOCK) / BLOCK;
    const int64_t w_row = K * elem_bytes(kind);  /* plain: bytes between rows of w */
    #pragma omp parallel num_threads(threads)
    {
        configure_tiles();
        int32_t acc[ROW_BLOCKS][BLOCK * BLOCK] __attribute__((aligned(64)));
        #pragma omp for schedule(static) collapse(2)
        for (int64_t mo = 0; mo < row_blocks; mo += ROW_BLOCKS)
            for (int64_t nb = 0; nb < col_blocks; nb++) {
                const int64_t last = mo + ROW_BLOCKS < row_blocks ? mo + ROW_BLOCKS : row_blocks;
                for (int64_t t0 = 0; t0 < kt; t0 += K_TILES) {
                    const int64_t t1 = t0 + K_TILES < kt ? t0 + K_TILES : kt;
                    for (int64_t mb = mo; mb < last; mb++) {
                        const uint8_t *x0 = xp + 2 * mb * kt * TILE_BYTES;
                        if (plain) {
                            const uint8_t *w0 = w + nb * BLOCK * w_row;
                            block(kind, w0, w0 + TILE_ROWS * w_row, w_row, ROW_BYTES, x0, x0 + kt * TILE_BYTES, t0,
                                  t1, acc[mb - mo]);
                        } else {
                            const uint8_t *w0 = w + 2 * nb * kt * TILE_BYTES;
                            block(kind, x0, x0 + kt * TILE_BYTES, ROW_BYTES, TILE_BYTES, w0, w0 + kt * TILE_BYTES, t0,
                                  t1, acc[mb - mo]);
                        }
                        if (t1 == kt && mb > mo)  /* the block before: its epilogue runs while the tiles multiply */
                            finish(out, acc[mb - mo - 1], (mb - 1) * BLOCK, nb * BLOCK, M, N, plain);
                    }
                }
                finish(out, acc[last - mo - 1], (last - 1) * BLOCK, nb * BLOCK, M, N, plain);
            }
        _tile_release();
    }
}

/* Rows of x (M, K; e-byte values, K a multiple of the tiles' depth) as the B operand of plain weights: for each 16
 * rows and tile of K, row r of the tile holds lane r (4 bytes) of each of the 16 rows, a 16 x 16 transpose of
 * lanes; rows past M are zeros. */
static void pack_rows_b(const uint8_t *x, uint8_t *xp, int64_t M, int64_t K, int64_t e, int64_t kt, int threads) {
    const int64_t groups = round_up(M, BLOCK) / TILE_ROWS, row_bytes = K * e;
    #pragma omp parallel for num_threads(threads) schedule(static) collapse(2)
    for (int64_t g = 0; g < groups; g++)
        for (int64_t t = 0; t < kt; t++) {
            __m512i r[16];
            for (int64_t i = 0; i < 16; i++)
                r[i] = g * 16 + i < M ? _mm512_loadu_si512(x + (g * 16 + i) * row_bytes + t * ROW_BYTES)
                                      : _mm512_setzero_si512();
            transpose16(r);
            for (int64_t i = 0; i < 16; i++) _mm512_store_si512(xp + (g * kt + t) * TILE_BYTES + i * ROW_BYTES, r[i]);
        }
}

/* Rows of bfloat16 x (M, K) into tiles at xp (the padding zero). */
static void pack_rows_bf16(const uint16_t *x, uint8_t *xp, int64_t M, int64_t K, int64_t kt, int threads) {
    if (M % BLOCK || K % (ROW_BYTES / 2)) memset(xp, 0, (size_t)(round_up(M, BLOCK) / TILE_ROWS * kt * TILE_BYTES));
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t m = 0; m < M; m++) pack_row((const uint8_t *)(x + m * K), K, 2, kt, m, xp);
}

/* int8 rows x (M, K) float32 (quantised here, as quantize_row) or x_q (M, K) int8 (as given) times a packed int8
 * weight: y (M, N) float32 = rescaled sums (w_scale, bias), with `gelu` through GELU, or the int32 sums themselves
 * where y_s32 is given. Returns 0, 1 when out of memory, 2 without the tiles. */
int fastbark_amx_s8(const float *x, const int8_t *x_q, const int8_t *packed, const float *w_scale, const float *bias,
                    float *y, int32_t *y_s32, int64_t M, int64_t N, int64_t K, int gelu, int threads) {
    if (!fastbark_amx_ready()) return 2;
    const int64_t kt = round_up(K, ROW_BYTES) / ROW_BYTES, mp = round_up(M, BLOCK);
    const size_t tiles = (size_t)(mp / TILE_ROWS * kt * TILE_BYTES), scales = (size_t)(round_up(M, 16) * 4);
    uint8_t *xp = scratch_bytes(0, tiles + scales + (size_t)(threads * K));
    if (!xp) return 1;
    float *xs = (float *)(xp + tiles);
    int8_t *rows = (int8_t *)(xp + tiles + scales);  /* a row of x quantised, for each thread */
    if (M % BLOCK || K % ROW_BYTES) memset(xp, 0, tiles);  /* the padding: zeros */
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t m = 0; m < M; m++) {
        int8_t *row = rows + omp_get_thread_num() * K;
        if (x_q) memcpy(row, x_q + m * K, (size_t)K);
        else quantize_row(x + m * K, K, row, NULL, xs + m);
        pack_row((const uint8_t *)row, K, 1, kt, m, xp);
    }
    const epilogue out = {y_s32, y, NULL, xs, w_scale, bias, gelu};
    products(KIND_S8, xp, (const uint8_t *)packed, 0, &out, M, N, K, kt, threads);
    return 0;
}

/* x (M, K) bfloat16, packed into tiles, times the bfloat16 weight tiles `packed`, or where that is NULL the int4
 * weight (w_q4, w_scale) expanded into tiles first, both in the calling thread's scratch memory; + bias (float32, or
 * NULL), with `gelu` through GELU -> y (M, N) bfloat16. Returns 0, 1 when out of memory, 2 without the tiles. */
static int bf16_call(const uint16_t *x, const uint8_t *packed, const uint8_t *w_q4, const float *w_scale,
                     const float *bias, uint16_t *y, int64_t M, int64_t N, int64_t K, int gelu, int threads) {
    if (!fastbark_amx_ready()) return 2;
    const int64_t kt = round_up(K, ROW_BYTES / 2) / (ROW_BYTES / 2), mp = round_up(M, BLOCK);
    const size_t x_tiles = (size_t)(mp / TILE_ROWS * kt * TILE_BYTES);
    uint8_t *xp = scratch_bytes(0, x_tiles + (packed ? 0 : (size_t)fastbark_amx_packed_bytes(KIND_BF16, N, K)));
    if (!xp) return 1;
    if (!packed) {
        fastbark_amx_pack_q4(w_q4, w_scale, xp + x_tiles, N, K, threads);
        packed = xp + x_tiles;
    }
    pack_rows_bf16(x, xp, M, K, kt, threads);
    const epilogue out = {NULL, NULL, y, NULL, NULL, bias, gelu};
    products(KIND_BF16, xp, packed, 0, &out, M, N, K, kt, threads);
    return 0;
}

/* The bfloat16 mode's product: x (M, K) bfloat16 times a packed bfloat16 weight, + bias (with `gelu`, through GELU
 * before the rounding) -> y (M, N) bfloat16. */
int fastbark_amx_bf16(const uint16_t *x, const uint16_t *packed, const float *bias, uint16_t *y, int64_t M, int64_t N,
                      int64_t K, int gelu, int threads) {
    return bf16_call(x, (const uint8_t *)packed, NULL, NULL, bias, y, M, N, K, gelu, threads);
}

/* The int4 mode's bfloat16 route (int4.py) on the tiles: x (M, K) bfloat16 times an int4 weight (int4.h's layout:
 * packed (N, q4_row_bytes(K)), scales (N, groups)), expanded into bfloat16 tiles for this call only -> y (M, N). */
int fastbark_amx_q4(const uint16_t *x, const uint8_t *w, const float *w_scale, uint16_t *y, int64_t M, int64_t N,
                    int64_t K, int threads) {
    return bf16_call(x, NULL, w, w_scale, NULL, y, M, N, K, 0, threads);
}

/* The decode stages' prefills, whose weights are kept only in their plain (N, K) layout (the one-call step reads
 * it): w's rows as the tiles' A operand (16 outputs x 64 bytes of K, rows K values apart: no packed copy), x's rows
 * packed at each call as the B operand (pack_rows_b), so the tiles hold y^T and the epilogue transposes them back.
 * The arguments and results of fastbark_amx_s8 and fastbark_amx_bf16 (the same sums: int8's exact, bfloat16's in
 * the same order), for K a multiple of 64 (int8) or 32 (bfloat16) and N of 32; 3 for other shapes. */
int fastbark_amx_s8_plain(const float *x, const int8_t *x_q, const int8_t *w, const float *w_scale, const float *bias,
                          float *y, int32_t *y_s32, int64_t M, int64_t N, int64_t K, int gelu, int threads) {
    if (!fastbark_amx_ready()) return 2;
    if (K % ROW_BYTES || N % BLOCK) return 3;
    const int64_t kt = K / ROW_BYTES, mp = round_up(M, BLOCK);
    const size_t tiles = (size_t)(mp / TILE_ROWS * kt * TILE_BYTES), scales = (size_t)(round_up(M, 16) * 4);
    uint8_t *xp = scratch_bytes(0, tiles + scales + (size_t)(x_q ? 0 : M * K));
    if (!xp) return 1;
    float *xs = (float *)(xp + tiles);
    if (!x_q) {  /* x quantised, after the tiles and scales */
        int8_t *rows = (int8_t *)(xp + tiles + scales);
        #pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t m = 0; m < M; m++) quantize_row(x + m * K, K, rows + m * K, NULL, xs + m);
        x_q = rows;
    }
    pack_rows_b((const uint8_t *)x_q, xp, M, K, 1, kt, threads);
    const epilogue out = {y_s32, y, NULL, xs, w_scale, bias, gelu};
    products(KIND_S8, xp, (const uint8_t *)w, 1, &out, M, N, K, kt, threads);
    return 0;
}

int fastbark_amx_bf16_plain(const uint16_t *x, const uint16_t *w, const float *bias, uint16_t *y, int64_t M, int64_t N,
                            int64_t K, int gelu, int threads) {
    if (!fastbark_amx_ready()) return 2;
    if (K % (ROW_BYTES / 2) || N % BLOCK) return 3;
    const int64_t kt = K / (ROW_BYTES / 2), mp = round_up(M, BLOCK);
    uint8_t *xp = scratch_bytes(0, (size_t)(mp / TILE_ROWS * kt * TILE_BYTES));
    if (!xp) return 1;
    pack_rows_b((const uint8_t *)x, xp, M, K, 2, kt, threads);
    const epilogue out = {NULL, NULL, y, NULL, NULL, bias, gelu};
    products(KIND_BF16, xp, (const uint8_t *)w, 1, &out, M, N, K, kt, threads);
    return 0;
}

#else  /* no AMX in this build */

int fastbark_amx_ready(void) { return 0; }
int fastbark_amx_s8(const float *x, const int8_t *x_q, const int8_t *packed, const float *w_scale, const float *bias,
                    float *y, int32_t *y_s32, int64_t M, int64_t N, int64_t K, int gelu, int threads) {
    (void)x; (void)x_q; (void)packed; (void)w_scale; (void)bias; (void)y; (void)y_s32; (void)M; (void)N; (void)K;
    (void)gelu; (void)threads;
    return 2;
}
int fastbark_amx_bf16(const uint16_t *x, const uint16_t *packed, const float *bias, uint16_t *y, int64_t M, int64_t N,
                      int64_t K, int gelu, int threads) {
    (void)x; (void)packed; (void)bias; (void)y; (void)M; (void)N; (void)K; (void)gelu; (void)threads;
    return 2;
}
int fastbark_amx_q4(const uint16_t *x, const uint8_t *w, const float *w_scale, uint16_t *y, int64_t M, int64_t N,
                    int64_t K, int threads) {
    (void)x; (void)w; (void)w_scale; (void)y; (void)M; (void)N; (void)K; (void)threads;
    return 2;
}

int fastbark_amx_s8_plain(const float *x, const int8_t *x_q, const int8_t *w, const float *w_scale, const float *bias,
                          float *y, int32_t *y_s32, int64_t M, int64_t N, int64_t K, int gelu, int threads) {
    return fastbark_amx_s8(x, x_q, w, w_scale, bias, y, y_s32, M, N, K, gelu, threads);  /* 2, as it */
}
int fastbark_amx_bf16_plain(const uint16_t *x, const uint16_t *w, const float *bias, uint16_t *y, int64_t M, int64_t N,
                            int64_t K, int gelu, int threads) {
    return fastbark_amx_bf16(x, w, bias, y, M, N, K, gelu, threads);  /* 2, as it */
}

#endif
