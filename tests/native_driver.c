/* Runs fastbark's C kernels (fastbark/backends/cpu/native) on fixed pseudo-random inputs and writes every output to
 * one file, so that a build for another CPU, run under an emulator, can be compared with this machine's build
 * (tests/test_native_targets.py). No Python, no torch: what an emulated 64-bit ARM machine can run quickly.
 *
 *     native_driver OUT_FILE
 *
 * Each record: a 32-byte name, an int64 count, then that many float32 values (int8 outputs widened to float32).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void fastbark_gemv_f32(const float *x, const float *w, const float *bias, float *y, int64_t M, int64_t N, int64_t K,
                       int threads);
int fastbark_linear_s8(const float *x, const int8_t *wq, const int32_t *w_sum, const float *w_scale, const float *bias,
                       float *y, int64_t M, int64_t N, int64_t K, int threads);
int fastbark_linear_q4(const float *x, const uint8_t *w, const float *w_scale, const float *bias, float *y, int64_t M,
                       int64_t N, int64_t K, int threads);
void fastbark_dequantize_q4(const uint8_t *w, const float *w_scale, float *out, int64_t N, int64_t K, int threads);
void fastbark_quantize_rows(const float *x, int8_t *q, float *scale, int64_t M, int64_t K, int threads);
int fastbark_quantize_rows_f32(const float *x, float *q, float *scale, int64_t M, int64_t K, int threads);
void fastbark_rescale_s32(const int32_t *acc, const float *x_scale, const float *w_scale, const float *bias, float *y,
                          int64_t M, int64_t N, int gelu, int threads);
void fastbark_rescale_f32(const float *acc, const float *x_scale, const float *w_scale, const float *bias, float *y,
                          int64_t M, int64_t N, int gelu, int threads);
void fastbark_gelu_f32(float *y, int64_t n, int threads);
int fastbark_attention_bf16(const float *qkv, float *out, int64_t B, int64_t T, int64_t C, int64_t H, int causal,
                            int threads);
int fastbark_has_bf16(void);
int fastbark_decode_step(int format, float *x, const void **layers, int64_t n_layer, void *k_cache, void *v_cache,
                         float *k_scale, float *v_scale, int kv, int64_t B, int64_t C, int64_t H, int64_t max_len,
                         int64_t pos, float eps, int threads);

enum { INT8, BF16, F32, INT4 };  /* decode_step.c's formats */
enum { GROUP = 32, BLOCK = 64, BLOCK_BYTES = 32 };  /* int4.h's layout */

static uint64_t state = 0x9E3779B97F4A7C15ull;
static uint32_t next_u32(void) {  /* xorshift64*: the same sequence on every machine */
    state ^= state >> 12; state ^= state << 25; state ^= state >> 27;
    return (uint32_t)((state * 0x2545F4914F6CDD1Dull) >> 32);
}
static float uniform(void) { return (float)(next_u32() >> 8) / 8388608.0f - 1.0f; }  /* [-1, 1), exact */

static float *floats(int64_t n, float scale) {
    float *p = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) p[i] = uniform() * scale;
    return p;
}
static int8_t *bytes(int64_t n) {  /* int8 weights in [-127, 127], as int8.py quantises them */
    int8_t *p = malloc((size_t)n);
    for (int64_t i = 0; i < n; i++) p[i] = (int8_t)((int)(next_u32() % 255) - 127);
    return p;
}
static uint16_t *bf16s(int64_t n, float scale) {  /* bfloat16 values: the top half of float32s */
    uint16_t *p = malloc((size_t)n * sizeof(uint16_t));
    for (int64_t i = 0; i < n; i++) {
        float f = uniform() * scale;
        uint32_t u;
        memcpy(&u, &f, sizeof u);
        p[i] = (uint16_t)(u >> 16);
    }
    return p;
}
static int32_t *row_sums(const int8_t *wq, int64_t N, int64_t K) {  /* int8.py's weight_sum: the VNNI dots' correction */
    int32_t *sums = malloc((size_t)N * sizeof(int32_t));
    for (int64_t n = 0; n < N; n++) {
        sums[n] = 0;
        for (int64_t k = 0; k < K; k++) sums[n] += wq[n * K + k];
    }
    return sums;
}
static int64_t q4_row_bytes(int64_t K) { return (K + BLOCK - 1) / BLOCK * BLOCK_BYTES; }
static int64_t q4_groups(int64_t K) { return (K + GROUP - 1) / GROUP; }

static FILE *out;
static void emit(const char *name, const float *p, int64_t n) {
    char tag[32] = {0};
    memcpy(tag, name, strnlen(name, sizeof tag - 1));
    fwrite(tag, 1, sizeof tag, out);
    fwrite(&n, sizeof n, 1, out);
    fwrite(p, sizeof(float), (size_t)n, out);
}

/* (M, N, K): every tail of the blocks, of K's vector steps and of int4's groups, and a real width */
static const int64_t SHAPES[][3] = {{1, 7, 45}, {5, 10, 96}, {9, 4, 130}, {3, 33, 64}, {2, 5, 200}, {8, 70, 768}};

static void products(void) {
    char name[32];
    for (size_t s = 0; s < sizeof SHAPES / sizeof SHAPES[0]; s++) {
        const int64_t M = SHAPES[s][0], N = SHAPES[s][1], K = SHAPES[s][2];
        float *x = floats(M * K, 2.0f), *w = floats(N * K, 0.5f), *bias = floats(N, 1.0f), *y = floats(M * N, 0);
        fastbark_gemv_f32(x, w, bias, y, M, N, K, 2);
        snprintf(name, sizeof name, "f32 %lldx%lldx%lld", (long long)M, (long long)N, (long long)K);
        emit(name, y, M * N);
        float *one = floats(N, 0);
        int same = 1;  /* the exact mode's promise: each row alone, on one thread, has its bits in the batch */
        for (int64_t m = 0; m < M; m++) {
            fastbark_gemv_f32(x + m * K, w, bias, one, 1, N, K, 1);
            same &= memcmp(one, y + m * N, (size_t)N * sizeof(float)) == 0;
        }
        snprintf(name, sizeof name, "invariant f32 %lldx%lldx%lld", (long long)M, (long long)N, (long long)K);
        emit(name, &(float){(float)same}, 1);
        free(one);

        int8_t *wq = bytes(N * K);
        int32_t *w_sum = row_sums(wq, N, K);
        float *w_scale = floats(N, 0.01f);
        fastbark_linear_s8(x, wq, w_sum, w_scale, bias, y, M, N, K, 2);
        snprintf(name, sizeof name, "s8 %lldx%lldx%lld", (long long)M, (long long)N, (long long)K);
        emit(name, y, M * N);

        int8_t *xq = malloc((size_t)(M * K));
        float *x_scale = malloc((size_t)M * sizeof(float)), *xq_f = malloc((size_t)(M * K) * sizeof(float));
        fastbark_quantize_rows(x, xq, x_scale, M, K, 2);
        for (int64_t i = 0; i < M * K; i++) xq_f[i] = xq[i];
        snprintf(name, sizeof name, "quantized %lldx%lld", (long long)M, (long long)K);
        emit(name, xq_f, M * K);
        emit("quantized scales", x_scale, M);
        float *q_f = malloc((size_t)(M * K) * sizeof(float)), *q_scale = malloc((size_t)M * sizeof(float));
        if (fastbark_quantize_rows_f32(x, q_f, q_scale, M, K, 2)) exit(1);
        snprintf(name, sizeof name, "quantized f32 %lldx%lld", (long long)M, (long long)K);
        emit(name, q_f, M * K);

        /* the int8 mode's rescale of a big product's sums: int32, and float32 holding the same integers */
        int32_t *acc = malloc((size_t)(M * N) * sizeof(int32_t));
        float *acc_f = malloc((size_t)(M * N) * sizeof(float));
        for (int64_t i = 0; i < M * N; i++) acc_f[i] = (float)(acc[i] = (int32_t)(next_u32() % 2000001) - 1000000);
        for (int gelu = 0; gelu < 2; gelu++) {  /* and the MLP's first product: its GELU (gelu.h) in this pass */
            fastbark_rescale_s32(acc, x_scale, w_scale, bias, y, M, N, gelu, 2);
            snprintf(name, sizeof name, "rescale s32%s %lldx%lld", gelu ? " gelu" : "", (long long)M, (long long)N);
            emit(name, y, M * N);
            fastbark_rescale_f32(acc_f, x_scale, w_scale, bias, y, M, N, gelu, 2);
            snprintf(name, sizeof name, "rescale f32%s %lldx%lld", gelu ? " gelu" : "", (long long)M, (long long)N);
            emit(name, y, M * N);
        }
        free(q_f); free(q_scale); free(acc); free(acc_f);

        const int64_t row_bytes = q4_row_bytes(K), groups = q4_groups(K);
        uint8_t *packed = malloc((size_t)(N * row_bytes));
        for (int64_t i = 0; i < N * row_bytes; i++) packed[i] = (uint8_t)next_u32();
        float *d = floats(N * groups, 0.02f), *dequantized = malloc((size_t)(N * K) * sizeof(float));
        fastbark_linear_q4(x, packed, d, bias, y, M, N, K, 2);
        snprintf(name, sizeof name, "q4 %lldx%lldx%lld", (long long)M, (long long)N, (long long)K);
        emit(name, y, M * N);
        fastbark_dequantize_q4(packed, d, dequantized, N, K, 2);
        snprintf(name, sizeof name, "q4 weight %lldx%lld", (long long)N, (long long)K);
        emit(name, dequantized, N * K);
        free(x); free(w); free(bias); free(y); free(wq); free(w_sum); free(w_scale); free(xq); free(x_scale);
        free(xq_f); free(packed); free(d); free(dequantized);
    }
}

/* One linear layer of the step's table: weight, weight_sum, weight_scale, bias (decode_step.c's Linear). */
static void linear(const void **slot, int format, int64_t N, int64_t K) {
    if (format == F32) {
        slot[0] = floats(N * K, 0.2f); slot[1] = NULL; slot[2] = NULL;
    } else if (format == BF16) {
        slot[0] = bf16s(N * K, 0.2f); slot[1] = NULL; slot[2] = NULL;
    } else if (format == INT8) {
        int8_t *wq = bytes(N * K);
        slot[0] = wq; slot[1] = row_sums(wq, N, K); slot[2] = floats(N, 0.002f);
    } else {
        uint8_t *packed = malloc((size_t)(N * q4_row_bytes(K)));
        for (int64_t i = 0; i < N * q4_row_bytes(K); i++) packed[i] = (uint8_t)next_u32();
        slot[0] = packed; slot[1] = NULL; slot[2] = floats(N * q4_groups(K), 0.004f);
    }
    slot[3] = floats(N, 0.1f);
}

static void decode_steps(void) {
    enum { LAYERS = 2, B = 3, C = 64, H = 2, MAX_LEN = 16, POS = 13, PER_LAYER = 20 };
    const int formats[] = {F32, INT8, INT4, BF16};
    const char *names[] = {"f32", "int8", "int4", "bf16"};
    for (int f = 0; f < 4; f++) {
        for (int kv = 0; kv < (formats[f] == F32 ? 1 : 3); kv++) {  /* the cache: 0 float32, 1 bfloat16, 2 int8 */
            const void *table[LAYERS * PER_LAYER];
            for (int l = 0; l < LAYERS; l++) {
                const void **t = table + l * PER_LAYER;
                float *ln1 = floats(C, 0.1f), *ln2 = floats(C, 0.1f);
                for (int c = 0; c < C; c++) { ln1[c] += 1.0f; ln2[c] += 1.0f; }
                t[0] = ln1; t[1] = floats(C, 0.1f);
                linear(t + 2, formats[f], 3 * C, C);
                linear(t + 6, formats[f], C, C);
                t[10] = ln2; t[11] = floats(C, 0.1f);
                linear(t + 12, formats[f], 4 * C, C);
                linear(t + 16, formats[f], C, 4 * C);
            }
            const int64_t cache_n = (int64_t)LAYERS * B * H * MAX_LEN * (C / H), scale_n = cache_n / (C / H);
            float *k = floats(cache_n, 1.0f), *v = floats(cache_n, 1.0f), *x = floats(B * C, 1.0f);
            uint16_t *k16 = malloc((size_t)cache_n * 2), *v16 = malloc((size_t)cache_n * 2);
            for (int64_t i = 0; i < cache_n; i++) {  /* bfloat16: the top half of each float32 (values exact) */
                uint32_t u;
                memcpy(&u, &k[i], 4); k16[i] = (uint16_t)(u >> 16); u &= 0xffff0000u; memcpy(&k[i], &u, 4);
                memcpy(&u, &v[i], 4); v16[i] = (uint16_t)(u >> 16); u &= 0xffff0000u; memcpy(&v[i], &u, 4);
            }
            /* int8: integers and a scale per position and head (drawn only here: the other records keep their data) */
            int8_t *k8 = kv == 2 ? bytes(cache_n) : NULL, *v8 = kv == 2 ? bytes(cache_n) : NULL;
            float *ks = kv == 2 ? floats(scale_n, 0.005f) : NULL, *vs = kv == 2 ? floats(scale_n, 0.005f) : NULL;
            for (int64_t i = 0; i < scale_n && kv == 2; i++) { ks[i] = fabsf(ks[i]) + 0.002f; vs[i] = fabsf(vs[i]) + 0.002f; }
            void *kc = kv == 2 ? (void *)k8 : kv ? (void *)k16 : (void *)k, *vc = kv == 2 ? (void *)v8 : kv ? (void *)v16 : (void *)v;
            /* each row alone first, on one thread, with a copy of its own cache rows: (layer, row, H, MAX_LEN, hd) */
            const int64_t row_n = (int64_t)H * MAX_LEN * (C / H), row_s = (int64_t)H * MAX_LEN, elem = kv == 2 ? 1 : kv ? 2 : 4;
            float *alone = malloc((size_t)(B * C) * sizeof(float));
            char *k1 = malloc((size_t)(LAYERS * row_n * elem)), *v1 = malloc((size_t)(LAYERS * row_n * elem));
            float *ks1 = malloc((size_t)(LAYERS * row_s) * sizeof(float)), *vs1 = malloc((size_t)(LAYERS * row_s) * sizeof(float));
            for (int r = 0; r < B; r++) {
                for (int l = 0; l < LAYERS; l++) {
                    const int64_t from = ((int64_t)l * B + r) * row_n * elem, to = (int64_t)l * row_n * elem;
                    memcpy(k1 + to, (char *)kc + from, (size_t)(row_n * elem));
                    memcpy(v1 + to, (char *)vc + from, (size_t)(row_n * elem));
                    if (kv != 2) continue;
                    memcpy(ks1 + l * row_s, ks + ((int64_t)l * B + r) * row_s, (size_t)row_s * sizeof(float));
                    memcpy(vs1 + l * row_s, vs + ((int64_t)l * B + r) * row_s, (size_t)row_s * sizeof(float));
                }
                memcpy(alone + r * C, x + r * C, C * sizeof(float));
                if (fastbark_decode_step(formats[f], alone + r * C, table, LAYERS, k1, v1, kv == 2 ? ks1 : NULL,
                                         kv == 2 ? vs1 : NULL, kv, 1, C, H, MAX_LEN, POS, 1e-5f, 1)) {
                    fprintf(stderr, "decode step %s failed\n", names[f]);
                    exit(1);
                }
            }
            if (fastbark_decode_step(formats[f], x, table, LAYERS, kc, vc, kv == 2 ? ks : NULL, kv == 2 ? vs : NULL, kv,
                                     B, C, H, MAX_LEN, POS, 1e-5f, 2)) {
                fprintf(stderr, "decode step %s failed\n", names[f]);
                exit(1);
            }
            const char *suffix[] = {"", " bf16", " int8"};
            char name[32];
            snprintf(name, sizeof name, "invariant step %s%s", names[f], suffix[kv]);
            emit(name, &(float){(float)(memcmp(alone, x, (size_t)(B * C) * sizeof(float)) == 0)}, 1);
            free(alone); free(k1); free(v1); free(ks1); free(vs1);
            snprintf(name, sizeof name, "step %s%s", names[f], kv ? (kv == 2 ? " int8 cache" : " bf16 cache") : "");
            emit(name, x, B * C);
            for (int64_t i = 0; i < cache_n && kv; i++) {  /* the written keys, back to float32 */
                if (kv == 2) { k[i] = (float)k8[i] * ks[i / (C / H)]; continue; }
                uint32_t u = (uint32_t)k16[i] << 16;
                memcpy(&k[i], &u, 4);
            }
            snprintf(name, sizeof name, "step %s%s keys", names[f], kv ? (kv == 2 ? " int8 cache" : " bf16 cache") : "");
            /* int8 cache: the first layer's keys only, which come from exact products of the input alone (a later
               layer's come through attention's float sums, which may move an integer by one on another CPU) */
            emit(name, k, kv == 2 ? cache_n / LAYERS : cache_n);
            free(k); free(v); free(x); free(k16); free(v16); free(k8); free(v8); free(ks); free(vs);
        }
    }
}

/* The bfloat16 mode's whole-sequence attention (AVX512-BF16 builds only; elsewhere it declines, and the records are
 * empty): its input, and its output without and with the causal mask. */
static void attention(void) {
    enum { B = 2, T = 37, C = 64, H = 2 };
    float *qkv = floats(B * T * 3 * C, 1.0f), *o = malloc((size_t)(B * T * C) * sizeof(float));
    emit("attention qkv", qkv, B * T * 3 * C);
    emit("has bf16", &(float){(float)fastbark_has_bf16()}, 1);
    for (int causal = 0; causal < 2; causal++) {
        const int ran = fastbark_attention_bf16(qkv, o, B, T, C, H, causal, 2) == 0;
        emit(causal ? "attention bf16 causal" : "attention bf16", o, ran ? B * T * C : 0);
    }
    free(qkv); free(o);
}

/* gelu.h's GELU over every interval of its tables, their joins and past them, and the far tails */
static void gelu(void) {
    enum { N = 20011 };  /* not a multiple of the vectors: a tail */
    float *y = floats(N, 0);
    for (int64_t i = 0; i < N - 6; i++) y[i] = -9.0f + 18.0f * (float)i / (float)(N - 7);
    const float tails[6] = {0.0f, -0.0f, 1e-30f, -1e-30f, 1e30f, -1e30f};
    memcpy(y + N - 6, tails, sizeof tails);
    fastbark_gelu_f32(y, N, 2);
    emit("gelu", y, N);
    free(y);
}

int main(int argc, char **argv) {
    if (argc != 2 || !(out = fopen(argv[1], "wb"))) {
        fprintf(stderr, "usage: native_driver OUT_FILE\n");
        return 2;
    }
    products();
    decode_steps();
    attention();
    gelu();
    return fclose(out) != 0;
}
