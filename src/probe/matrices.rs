//! The challenge's matrices from its seed, and their product.

use sha2::{Digest, Sha256};

/// The largest tile: its matrices' words must fit a generator stream.
pub const MAX_SIZE: u32 = 1 << 15;

/// The challenge's size: `tiles` pairs of `size`×`size` INT8 matrices (`size` ≤ [`MAX_SIZE`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    pub size: u32,
    pub tiles: u32,
}

impl Spec {
    /// GPU memory one tile occupies: A and B as INT8, C as int32.
    pub fn tile_bytes(&self) -> u64 {
        6 * u64::from(self.size) * u64::from(self.size)
    }

    /// The spec with tiles of `size` (within 1 to [`MAX_SIZE`]) that fills at least 90 % of
    /// `memory_bytes`.
    pub fn filling(memory_bytes: u64, size: u32) -> Spec {
        let spec = Spec {
            size: size.clamp(1, MAX_SIZE),
            tiles: 0,
        };
        let wanted = memory_bytes.div_ceil(10) * 9;
        Spec {
            tiles: u32::try_from(wanted.div_ceil(spec.tile_bytes().max(1))).unwrap_or(u32::MAX),
            ..spec
        }
    }

    /// Rows committed to: one Merkle leaf each.
    pub fn rows(&self) -> u64 {
        u64::from(self.tiles) * u64::from(self.size)
    }
}

/// Which matrix of a tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Matrix {
    A = 0,
    B = 1,
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's finalizer: a bijective mix of 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Four 64-bit keys from a seed, for one use (`domain`): every byte of the seed moves every key.
pub(crate) fn keys(seed: &[u8; 32], domain: &str) -> [u64; 4] {
    let digest = Sha256::new()
        .chain_update(domain.as_bytes())
        .chain_update([0])
        .chain_update(seed)
        .finalize();
    let mut keys = [0; 4];
    for (k, bytes) in keys.iter_mut().zip(digest.chunks(8)) {
        *k = u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
    }
    keys
}

/// Word `counter` of stream `stream` of the generator keyed by `key`: SplitMix64's output at
/// that index, so one GPU thread computes any word alone. Streams hold 2^30 words (a tile of
/// 2^15 × 2^15 elements).
pub(crate) fn word(key: u64, stream: u64, counter: u64) -> u64 {
    let index = (stream << 30) | (counter & ((1 << 30) - 1));
    mix(key.wrapping_add(index.wrapping_add(1).wrapping_mul(GOLDEN)))
}

/// The same arithmetic for NVIDIA GPUs: CUDA C++ for NVRTC, kernels `probe_generate` and
/// `probe_multiply`.
pub const CUDA_SOURCE: &str = include_str!("kernels.cu");

/// The generator key of matrix `which` for `seed`, as [`generate`] and the CUDA kernel take it.
pub fn matrix_key(seed: &[u8; 32], which: Matrix) -> u64 {
    keys(seed, "gpubridge/v1/probe-matrices")[which as usize]
}

/// Matrix `which` of tile `tile`, row-major, `size`² INT8 elements: element e is byte e % 8 of
/// word e / 8 of the stream (tile, matrix).
pub fn generate(seed: &[u8; 32], size: u32, tile: u32, which: Matrix) -> Vec<i8> {
    let n = size as usize * size as usize;
    let k = matrix_key(seed, which);
    let stream = (u64::from(tile) << 1) | which as u64;
    let mut out = Vec::with_capacity(n);
    for counter in 0..n.div_ceil(8) as u64 {
        let bytes = word(k, stream, counter).to_le_bytes();
        let take = (n - out.len()).min(8);
        out.extend(bytes[..take].iter().map(|&b| b as i8));
    }
    out
}

/// A·B for `size`×`size` row-major INT8 matrices, accumulated in int32 (exact: a sum of n
/// products of at most 2^14 stays below 2^31 for n ≤ 2^16).
pub fn multiply(a: &[i8], b: &[i8], size: u32) -> Vec<i32> {
    let n = size as usize;
    let mut c = vec![0i32; n * n];
    for i in 0..n {
        let row = &mut c[i * n..(i + 1) * n];
        for k in 0..n {
            let aik = i32::from(a[i * n + k]);
            if aik == 0 {
                continue;
            }
            for (out, &bkj) in row.iter_mut().zip(&b[k * n..(k + 1) * n]) {
                *out += aik * i32::from(bkj);
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::verify::row_leaves;

    #[test]
    fn the_matrices_are_the_seeds_and_nothing_else() {
        let seed = [3; 32];
        let a = generate(&seed, 16, 0, Matrix::A);
        assert_eq!(a.len(), 256);
        assert_eq!(a, generate(&seed, 16, 0, Matrix::A));
        assert_ne!(a, generate(&seed, 16, 1, Matrix::A), "another tile");
        assert_ne!(a, generate(&seed, 16, 0, Matrix::B), "the other matrix");
        let mut other = seed;
        other[0] ^= 1;
        assert_ne!(a, generate(&other, 16, 0, Matrix::A), "another seed");
        // Both signs and the whole range appear: INT8, not bytes reinterpreted.
        let big = generate(&seed, 64, 0, Matrix::A);
        assert!(big.contains(&i8::MIN) && big.contains(&i8::MAX) && big.contains(&0));
        // A size that is no multiple of 8 still gets every element.
        assert_eq!(generate(&seed, 3, 0, Matrix::B).len(), 9);
    }

    #[test]
    fn the_product_is_exact_int32_matrix_multiplication() {
        let a = [1i8, 2, 3, 4];
        let b = [5i8, 6, 7, 8];
        assert_eq!(multiply(&a, &b, 2), vec![19, 22, 43, 50]);
        let extremes = [i8::MIN; 4];
        assert_eq!(multiply(&extremes, &extremes, 2), vec![32_768; 4]);
    }

    #[test]
    fn the_spec_fills_nine_tenths_of_the_memory() {
        let h100 = 80 * 1024 * 1024 * 1024u64;
        let spec = Spec::filling(h100, 8192);
        assert!(u64::from(spec.tiles) * spec.tile_bytes() >= h100 / 10 * 9);
        assert!(u64::from(spec.tiles - 1) * spec.tile_bytes() < h100 / 10 * 9);
        assert_eq!(spec.rows(), u64::from(spec.tiles) * 8192);
    }

    /// Runs the CUDA kernels' grid one thread after another on the CPU.
    const CPU_GRID: &str = r#"
#include <cstdio>
#include <cstdlib>
#include <vector>
#define __global__
#define __device__ static
#define __constant__ static const
struct Index { unsigned x; };
static Index blockIdx, threadIdx, blockDim, gridDim;
#include "kernels.cu"
template <class Kernel> static void grid(unsigned blocks, unsigned threads, Kernel kernel) {
    gridDim.x = blocks;
    blockDim.x = threads;
    for (blockIdx.x = 0; blockIdx.x < blocks; ++blockIdx.x)
        for (threadIdx.x = 0; threadIdx.x < threads; ++threadIdx.x) kernel();
}
int main(int argc, char **argv) {
    u64 key_a = strtoull(argv[1], 0, 10), key_b = strtoull(argv[2], 0, 10);
    unsigned n = (unsigned)atoi(argv[3]);
    u64 tiles = strtoull(argv[4], 0, 10);
    size_t elements = (size_t)n * n * tiles;
    std::vector<signed char> a(elements), b(elements);
    std::vector<int> c(elements);
    std::vector<unsigned char> leaves((size_t)n * tiles * 32);
    grid(3, 7, [&] { probe_generate(a.data(), key_a, 0, n, tiles); });
    grid(2, 5, [&] { probe_generate(b.data(), key_b, 1, n, tiles); });
    grid(3, 4, [&] { probe_multiply(a.data(), b.data(), c.data(), n, tiles); });
    grid(2, 3, [&] { probe_row_leaves(c.data(), leaves.data(), n, (u64)n * tiles); });
    fwrite(a.data(), 1, elements, stdout);
    fwrite(b.data(), 1, elements, stdout);
    fwrite(c.data(), 4, elements, stdout);
    fwrite(leaves.data(), 1, leaves.size(), stdout);
}
"#;

    /// The CUDA kernels, compiled for the CPU by the C++ compiler Rust links with, computed
    /// with a grid smaller than the work (so every thread strides): the same matrices,
    /// products and row leaves as the Rust reference, element for element. (Compiling them with NVRTC is the
    /// sidecar's test; running them on a GPU needs one.)
    #[test]
    fn the_cuda_kernels_compute_what_the_reference_computes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kernels.cu"), CUDA_SOURCE).unwrap();
        std::fs::write(dir.path().join("grid.cpp"), CPU_GRID).unwrap();
        let compiler = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
        let built = std::process::Command::new(&compiler)
            .current_dir(dir.path())
            .args([
                "-std=c++17",
                "-O1",
                "-Wall",
                "-Werror",
                "grid.cpp",
                "-o",
                "grid",
            ])
            .output()
            .unwrap_or_else(|e| panic!("{compiler} (set CXX for another): {e}"));
        assert!(
            built.status.success(),
            "{}",
            String::from_utf8_lossy(&built.stderr)
        );
        let seed = [0x5a; 32];
        // Rows of 45, 57 (the padding spills into a second block), 65 and 257 bytes hashed.
        for (size, tiles) in [(11u32, 3u32), (14, 1), (16, 2), (64, 1)] {
            let out = std::process::Command::new(dir.path().join("grid"))
                .args([
                    matrix_key(&seed, Matrix::A).to_string(),
                    matrix_key(&seed, Matrix::B).to_string(),
                    size.to_string(),
                    tiles.to_string(),
                ])
                .output()
                .unwrap();
            assert!(out.status.success());
            let per_tile = (size * size) as usize;
            let all = per_tile * tiles as usize;
            let rows = (size * tiles) as usize;
            assert_eq!(out.stdout.len(), 6 * all + 32 * rows);
            let (a, rest) = out.stdout.split_at(all);
            let (b, rest) = rest.split_at(all);
            let (c, leaves) = rest.split_at(4 * all);
            for t in 0..tiles {
                let at = generate(&seed, size, t, Matrix::A);
                let bt = generate(&seed, size, t, Matrix::B);
                let range = t as usize * per_tile..(t as usize + 1) * per_tile;
                let as_i8 = |bytes: &[u8]| bytes.iter().map(|&x| x as i8).collect::<Vec<_>>();
                assert_eq!(as_i8(&a[range.clone()]), at, "A of tile {t}, size {size}");
                assert_eq!(as_i8(&b[range.clone()]), bt, "B of tile {t}, size {size}");
                let ct: Vec<i32> = c[range.start * 4..range.end * 4]
                    .chunks(4)
                    .map(|w| i32::from_le_bytes(w.try_into().unwrap()))
                    .collect();
                assert_eq!(ct, multiply(&at, &bt, size), "C of tile {t}, size {size}");
                let leaves_t = &leaves[t as usize * size as usize * 32..][..size as usize * 32];
                assert_eq!(
                    leaves_t.chunks(32).map(|l| l.to_vec()).collect::<Vec<_>>(),
                    row_leaves(&ct, size)
                        .iter()
                        .map(|l| l.to_vec())
                        .collect::<Vec<_>>(),
                    "the row leaves of tile {t}, size {size}"
                );
            }
        }
    }
}
