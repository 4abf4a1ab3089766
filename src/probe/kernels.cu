// The probe's arithmetic on an NVIDIA GPU, compiled at run time by NVRTC: the same matrices as
// probe::matrices::generate, the same int32 products as probe::matrices::multiply, and the same
// Merkle leaves of their rows as probe::row_leaves. Plain C++ in CUDA's grid model, with no
// shared memory or intrinsics, so that the tests compile this file for the CPU too and compare
// what it computes with the Rust reference.

typedef unsigned long long u64;
typedef unsigned int u32;

// SplitMix64's finalizer and word, as matrices::mix and matrices::word.
__device__ u64 probe_mix(u64 z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

__device__ u64 probe_word(u64 key, u64 stream, u64 counter) {
    u64 index = (stream << 30) | (counter & ((1ULL << 30) - 1));
    return probe_mix(key + (index + 1) * 0x9e3779b97f4a7c15ULL);
}

__device__ u64 probe_thread() {
    return (u64)blockIdx.x * blockDim.x + threadIdx.x;
}

__device__ u64 probe_threads() {
    return (u64)gridDim.x * blockDim.x;
}

// Matrix `which` (0: A, 1: B) of every tile, tile after tile, n*n INT8 elements each, row-major:
// element e of tile t is byte e % 8 of word e / 8 of the stream (t << 1) | which.
extern "C" __global__ void probe_generate(signed char *out, u64 key, unsigned which, unsigned n,
                                          u64 tiles) {
    u64 per_tile = (u64)n * n;
    for (u64 i = probe_thread(); i < per_tile * tiles; i += probe_threads()) {
        u64 tile = i / per_tile;
        u64 e = i % per_tile;
        u64 word = probe_word(key, (tile << 1) | which, e / 8);
        out[i] = (signed char)(unsigned char)(word >> (8 * (e % 8)));
    }
}

// C_t = A_t * B_t for every tile, int32 accumulation (exact for n <= 2^16), one element a
// thread: consecutive threads take consecutive columns, so B's reads coalesce and A's broadcast.
extern "C" __global__ void probe_multiply(const signed char *a, const signed char *b, int *c,
                                          unsigned n, u64 tiles) {
    u64 per_tile = (u64)n * n;
    for (u64 i = probe_thread(); i < per_tile * tiles; i += probe_threads()) {
        u64 base = i - i % per_tile;
        u64 row = (i % per_tile) / n;
        u64 column = i % n;
        const signed char *a_row = a + base + row * n;
        const signed char *b_column = b + base + column;
        int sum = 0;
        for (u64 k = 0; k < n; ++k) {
            sum += (int)a_row[k] * (int)b_column[k * n];
        }
        c[i] = sum;
    }
}

// SHA-256 (FIPS 180-4), for the rows' leaves: hashing them where the products are means the host
// fetches 32 bytes a row instead of the row.
__constant__ u32 probe_sha_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

__device__ u32 probe_rotr(u32 x, unsigned n) { return (x >> n) | (x << (32 - n)); }

// A message being hashed: the state, the block being filled (big-endian words) and its length.
struct ProbeSha {
    u32 h[8];
    u32 block[16];
    unsigned filled;
    u64 length;
};

__device__ void probe_sha_compress(ProbeSha *s) {
    u32 w[64];
    for (int i = 0; i < 16; ++i) w[i] = s->block[i];
    for (int i = 16; i < 64; ++i) {
        u32 s0 = probe_rotr(w[i - 15], 7) ^ probe_rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
        u32 s1 = probe_rotr(w[i - 2], 17) ^ probe_rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    u32 a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3];
    u32 e = s->h[4], f = s->h[5], g = s->h[6], h = s->h[7];
    for (int i = 0; i < 64; ++i) {
        u32 t1 = h + (probe_rotr(e, 6) ^ probe_rotr(e, 11) ^ probe_rotr(e, 25)) +
                 ((e & f) ^ (~e & g)) + probe_sha_k[i] + w[i];
        u32 t2 = (probe_rotr(a, 2) ^ probe_rotr(a, 13) ^ probe_rotr(a, 22)) +
                 ((a & b) ^ (a & c) ^ (b & c));
        h = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    s->h[0] += a; s->h[1] += b; s->h[2] += c; s->h[3] += d;
    s->h[4] += e; s->h[5] += f; s->h[6] += g; s->h[7] += h;
}

__device__ void probe_sha_start(ProbeSha *s) {
    const u32 initial[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                            0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    for (int i = 0; i < 8; ++i) s->h[i] = initial[i];
    s->filled = 0;
    s->length = 0;
}

__device__ void probe_sha_byte(ProbeSha *s, u32 byte) {
    unsigned i = s->filled;
    if (i % 4 == 0) s->block[i / 4] = 0;
    s->block[i / 4] |= (byte & 0xff) << (24 - 8 * (i % 4));
    s->filled = i + 1;
    s->length += 1;
    if (s->filled == 64) {
        probe_sha_compress(s);
        s->filled = 0;
    }
}

__device__ void probe_sha_finish(ProbeSha *s, unsigned char *digest) {
    u64 bits = s->length * 8;
    probe_sha_byte(s, 0x80);
    while (s->filled != 56) probe_sha_byte(s, 0);
    for (int i = 7; i >= 0; --i) probe_sha_byte(s, (u32)(bits >> (8 * i)));
    for (int i = 0; i < 32; ++i) digest[i] = (unsigned char)(s->h[i / 4] >> (24 - 8 * (i % 4)));
}

// The Merkle leaf of every row of every product, row after row: SHA-256(0x00 ‖ the row's n
// values as little-endian int32), 32 bytes a row.
extern "C" __global__ void probe_row_leaves(const int *c, unsigned char *leaves, unsigned n,
                                            u64 rows) {
    for (u64 r = probe_thread(); r < rows; r += probe_threads()) {
        ProbeSha s;
        probe_sha_start(&s);
        probe_sha_byte(&s, 0);
        const int *row = c + r * n;
        for (unsigned k = 0; k < n; ++k) {
            u32 value = (u32)row[k];
            for (int b = 0; b < 4; ++b) probe_sha_byte(&s, value >> (8 * b));
        }
        probe_sha_finish(&s, leaves + r * 32);
    }
}
