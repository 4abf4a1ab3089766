//! The probe's CUDA engine: the kernels of [`CUDA_SOURCE`] compiled by NVRTC and run through the
//! driver API on the GPUs the probe container sees (the lease's, which the device plugin gave it),
//! in CUDA's order. Both libraries are loaded at first use, so a machine without them gets
//! [`CudaEngine::open`]'s error, never a binary that fails to start. Each GPU holds its products
//! in its own memory from the commitment to the checks; the host keeps the rows' hashes.

use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DriverError, LaunchConfig, PushKernelArg, sys,
};
use cudarc::nvrtc::{CompileOptions, Ptx, compile_ptx_with_opts};

use crate::commitment::merkle::Hash;
use crate::probe::matrices::{CUDA_SOURCE, Matrix, matrix_key};
use crate::probe::run::{Committed, Engine};
use crate::probe::{Answer, Round, Rows, Spec};

/// Threads a block; the kernels stride, so the grid need not cover the work.
const BLOCK: u32 = 256;
const MAX_BLOCKS: u64 = 1 << 16;

/// The CUDA engine: one context and the compiled kernels for each GPU, and what each holds.
pub struct CudaEngine {
    gpus: Vec<Gpu>,
}

struct Gpu {
    stream: Arc<CudaStream>,
    generate: CudaFunction,
    multiply: CudaFunction,
    row_leaves: CudaFunction,
    held: Option<Held>,
}

/// A GPU's products and the hashes of their rows.
struct Held {
    spec: Spec,
    products: CudaSlice<i32>,
    rows: Rows,
}

fn driver(what: &str) -> impl Fn(DriverError) -> String + '_ {
    move |e| format!("CUDA {what}: {e}")
}

impl CudaEngine {
    /// Loads the driver and NVRTC, compiles the kernels and loads them on every visible GPU.
    pub fn open() -> Result<CudaEngine, String> {
        // SAFETY: it only tries to dlopen the library by its usual names.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(
                "no CUDA driver library (libcuda.so.1): the NVIDIA container toolkit \
                        mounts it into containers that were given GPUs"
                    .into(),
            );
        }
        let ptx = compile()?;
        let count = CudaContext::device_count().map_err(driver("device count"))?;
        if count < 1 {
            return Err("CUDA sees no GPU".into());
        }
        let gpus = (0..count as usize)
            .map(|ordinal| {
                let context = CudaContext::new(ordinal).map_err(driver("context"))?;
                let module = context
                    .load_module(Ptx::from_src(ptx.clone()))
                    .map_err(driver("loading the kernels"))?;
                let function = |name| module.load_function(name).map_err(driver(name));
                Ok(Gpu {
                    stream: context.default_stream(),
                    generate: function("probe_generate")?,
                    multiply: function("probe_multiply")?,
                    row_leaves: function("probe_row_leaves")?,
                    held: None,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(CudaEngine { gpus })
    }

    /// The GPUs it runs on.
    pub fn gpus(&self) -> usize {
        self.gpus.len()
    }
}

/// The probe's kernels compiled by NVRTC to PTX (which the driver compiles for its GPU): needs
/// NVRTC, not a GPU.
pub fn compile() -> Result<String, String> {
    // SAFETY: it only tries to dlopen the library by its usual names.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err("no NVRTC library (libnvrtc.so.12) on the library path".into());
    }
    let ptx = compile_ptx_with_opts(
        CUDA_SOURCE,
        CompileOptions {
            name: Some("probe.cu".into()),
            ..Default::default()
        },
    )
    .map_err(|e| format!("NVRTC compiling the probe's kernels: {e}"))?;
    Ok(ptx.to_src())
}

fn launch_config(elements: u64) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            elements.div_ceil(u64::from(BLOCK)).clamp(1, MAX_BLOCKS) as u32,
            1,
            1,
        ),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl Gpu {
    /// Generates and multiplies `spec`'s tiles from `seed`, holding the products and hashing
    /// their rows; the multiplication's time in ms, as the GPU's events measured it.
    fn multiply(&mut self, spec: Spec, seed: &[u8; 32]) -> Result<u64, DriverError> {
        self.held = None; // a probe run again frees the last one's memory first
        let n = spec.size;
        let tiles = u64::from(spec.tiles);
        let elements = u64::from(n) * u64::from(n) * tiles;
        let stream = &self.stream;
        // SAFETY: every element is written by the kernels before anything reads it.
        let mut a = unsafe { stream.alloc::<i8>(elements as usize) }?;
        let mut b = unsafe { stream.alloc::<i8>(elements as usize) }?;
        let mut products = unsafe { stream.alloc::<i32>(elements as usize) }?;
        for (matrix, out) in [(Matrix::A, &mut a), (Matrix::B, &mut b)] {
            let (key, which) = (matrix_key(seed, matrix), matrix as u32);
            let mut launch = stream.launch_builder(&self.generate);
            launch.arg(out).arg(&key).arg(&which).arg(&n).arg(&tiles);
            // SAFETY: the arguments are the kernel's, in order and of its types.
            unsafe { launch.launch(launch_config(elements)) }?;
        }
        let timing = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let started = stream.record_event(timing)?;
        let mut launch = stream.launch_builder(&self.multiply);
        launch
            .arg(&a)
            .arg(&b)
            .arg(&mut products)
            .arg(&n)
            .arg(&tiles);
        // SAFETY: as above.
        unsafe { launch.launch(launch_config(elements)) }?;
        let ended = stream.record_event(timing)?;
        ended.synchronize()?;
        let kernel_ms = started.elapsed_ms(&ended)?.ceil().max(1.0) as u64;
        drop((a, b));
        let rows = Rows::new(spec, self.hash_rows(spec, &products)?);
        self.held = Some(Held {
            spec,
            products,
            rows,
        });
        Ok(kernel_ms)
    }

    /// Every row's leaf, in tile order, hashed on the GPU: the host fetches 32 bytes a row.
    fn hash_rows(&self, spec: Spec, products: &CudaSlice<i32>) -> Result<Vec<Hash>, DriverError> {
        let rows = spec.rows();
        // SAFETY: the kernel writes every leaf before it is fetched.
        let mut leaves = unsafe { self.stream.alloc::<u8>(rows as usize * 32) }?;
        let mut launch = self.stream.launch_builder(&self.row_leaves);
        launch
            .arg(products)
            .arg(&mut leaves)
            .arg(&spec.size)
            .arg(&rows);
        // SAFETY: the arguments are the kernel's, in order and of its types.
        unsafe { launch.launch(launch_config(rows)) }?;
        let bytes = self.stream.clone_dtoh(&leaves)?;
        Ok(bytes
            .chunks_exact(32)
            .map(|leaf| leaf.try_into().expect("32 bytes"))
            .collect())
    }

    fn answer(&self, rounds: &[Round]) -> Result<Vec<Answer>, String> {
        let held = self.held.as_ref().ok_or("this GPU was not multiplied")?;
        let per_tile = held.spec.size as usize * held.spec.size as usize;
        rounds
            .iter()
            .map(|round| {
                let first = round.tile as usize * per_tile;
                let product = self
                    .stream
                    .clone_dtoh(&held.products.slice(first..first + per_tile))
                    .map_err(driver("fetching a checked tile"))?;
                Ok(held.rows.answer(round, &product))
            })
            .collect()
    }
}

impl Engine for CudaEngine {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn multiply(&mut self, spec: Spec, seeds: &[[u8; 32]]) -> Result<Committed, String> {
        if seeds.len() > self.gpus.len() {
            return Err(format!(
                "the lease has {} GPUs, CUDA sees {}",
                seeds.len(),
                self.gpus.len()
            ));
        }
        // Every GPU at once, each from its own thread.
        let times = std::thread::scope(|scope| {
            let running: Vec<_> = self
                .gpus
                .iter_mut()
                .zip(seeds)
                .map(|(gpu, seed)| scope.spawn(move || gpu.multiply(spec, seed)))
                .collect();
            running
                .into_iter()
                .enumerate()
                .map(|(g, t)| {
                    t.join()
                        .expect("a GPU thread panicked")
                        .map_err(|e| format!("GPU {g}: {e}"))
                })
                .collect::<Result<Vec<u64>, String>>()
        })?;
        let roots = self.gpus[..seeds.len()]
            .iter()
            .map(|gpu| gpu.held.as_ref().expect("multiplied").rows.commitment())
            .collect();
        Ok(Committed {
            roots,
            // The slowest GPU's: each did the same work, which the band's throughput is of.
            kernel_ms: times.into_iter().max().unwrap_or(1),
        })
    }

    fn answer(&mut self, gpu: u32, rounds: &[Round]) -> Result<Vec<Answer>, String> {
        self.gpus
            .get(gpu as usize)
            .ok_or_else(|| format!("GPU {gpu}: CUDA sees {} GPUs", self.gpus.len()))?
            .answer(rounds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_machine_without_the_driver_gets_a_plain_error_not_a_crash() {
        // SAFETY: as in open.
        if unsafe { cudarc::driver::sys::is_culib_present() } {
            eprintln!("this machine has a CUDA driver: the GPU's own check is the device run");
            return;
        }
        let err = CudaEngine::open().err().expect("no driver, no engine");
        assert!(err.contains("libcuda.so.1"), "{err}");
    }

    /// NVRTC compiles the kernels the CPU-grid test runs (`probe::matrices`). `make unit` puts
    /// NVIDIA's redistributable NVRTC on the library path (packaging/nvrtc.sh) and requires it.
    #[test]
    fn nvrtc_compiles_the_probe_kernels() {
        // SAFETY: as in open.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            assert!(
                std::env::var_os("GPUBRIDGE_NVRTC_REQUIRED").is_none(),
                "GPUBRIDGE_NVRTC_REQUIRED is set, and libnvrtc.so.12 is not on the library path"
            );
            eprintln!("skipped: no libnvrtc.so.12 (`make unit` provides it)");
            return;
        }
        let ptx = compile().unwrap();
        for kernel in ["probe_generate", "probe_multiply", "probe_row_leaves"] {
            assert!(
                ptx.contains(&format!(".entry {kernel}(")),
                "{kernel} missing from the PTX"
            );
        }
    }
}
