// The probe's arithmetic on an NVIDIA GPU, compiled at run time by NVRTC: the same matrices as
// probe::matrices::generate and the same int32 products as probe::matrices::multiply. Plain C++
// in CUDA's grid model, with no shared memory or intrinsics, so that the tests compile this file
// for the CPU too and compare what it computes with the Rust reference.

typedef unsigned long long u64;

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
