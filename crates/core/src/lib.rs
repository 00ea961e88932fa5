//! Shared building blocks of automodel-rs.
//!
//! * [`tree`]: the naming tree — a parameter's Hugging Face key is its field path in the Burn
//!   module tree; one walk loads, saves, exports gradients, lists linears and freezes by name.
//! * [`init`]: random or shape-only parameter initialisation for constructors.
//! * [`weights`]: memory-mapped safetensors checkpoints (single file or sharded with
//!   `model.safetensors.index.json`), a loader that reports every missing, unexpected or
//!   mis-shaped key at once, and an atomic, optionally sharded writer.
//! * [`config`]: JSON config reading with errors that name the file and the field.
//! * [`nn`]: the layers every Gemma model shares — an HF-layout [`nn::Linear`], the Gemma RMSNorm
//!   (fp32 internally, optional weight, `w` or `1 + w`), split-half rotary embeddings with
//!   explicit position ids, tanh-GELU and the inverse normal CDF used by activation sparsity.
//! * [`loss`]: Hugging Face's causal-LM loss, and the memory-lean LM head + loss for training.
//! * [`backend`]: the [`Backend`] trait — Burn's backend with the fused operations (tanh-GELU,
//!   the LM head's loss, AdamW, the one-row matmul), generic in Burn ops and fused on the CPU.
//! * [`adamw`]: one AdamW update in `torch.optim.AdamW`'s order and precision.
//! * [`device`]: `cpu` / `cuda[:N]` / `wgpu[:N]` selection.
//! * [`memory`]: resident-size readings and the bound on pages the allocator keeps.
//!
//! Everything is generic over [`Backend`]; tests run on the `flex` CPU backend (and, with the
//! `wgpu` feature, on any Vulkan device, Mesa's software one included).

pub mod adamw;
pub mod backend;
pub mod cache;
pub mod config;
pub mod device;
pub mod error;
pub mod host;
pub mod init;
pub mod loss;
pub mod memory;
pub mod nn;
pub mod pretrained;
pub mod tree;
pub mod weights;

/// Make jemalloc (`tikv-jemallocator`, a dependency of the calling binary) the global allocator,
/// with freed pages kept for reuse, transparent huge pages for blocks of 32 MiB and more, and
/// large zeroed blocks zeroed by writing rather than by returning their pages
/// ([`memory::zero_by_writing`]) (`_RJEM_MALLOC_CONF` still overrides the jemalloc settings).
///
/// A training step allocates and frees tensors of hundreds of MB (a 262k-row embedding's
/// gradient and its optimizer temporaries). glibc hands every block over 32 MiB back to the
/// kernel, so each one is faulted in and zeroed again 4 KiB at a time; on the 270M this made
/// a full fine-tuning step 2.9× slower (docs/benchmarks.md). Those large blocks get huge pages
/// ([`memory::advise_huge_pages`]); the small and medium ones do not, because jemalloc's own
/// `thp:always` made every 2 MiB region it touched resident in full (about 350 MB more on the
/// 270M full step for no measurable speed). The cost that remains: freed memory stays with the
/// process, and pages it cannot fit to later requests pile up (a few MB per step). The trainer
/// bounds that with [`memory::ResidentLimit`], which calls the `jemalloc_release` function this
/// macro defines. Call the `jemalloc_setup()` it defines first thing in `main`: it splits page keeping
/// by block size ([`memory::tune_jemalloc`]) and registers `jemalloc_release`.
///
/// The binary depends on `tikv-jemallocator` and `tikv-jemalloc-sys`.
#[macro_export]
macro_rules! jemalloc {
    () => {
        /// jemalloc, with huge pages advised for large blocks.
        struct Allocator;

        const JE: ::tikv_jemallocator::Jemalloc = ::tikv_jemallocator::Jemalloc;

        use ::std::alloc::GlobalAlloc as _;

        // SAFETY: every call is forwarded to jemalloc with its layout; the advice changes no
        // memory, and a zeroed block taken by `alloc` is zeroed in full before it is returned.
        unsafe impl ::std::alloc::GlobalAlloc for Allocator {
            #[inline]
            unsafe fn alloc(&self, layout: ::std::alloc::Layout) -> *mut u8 {
                let p = unsafe { JE.alloc(layout) };
                $crate::memory::advise_huge_pages(p, layout.size());
                p
            }

            #[inline]
            unsafe fn alloc_zeroed(&self, layout: ::std::alloc::Layout) -> *mut u8 {
                if $crate::memory::zero_by_writing(layout.size()) {
                    // recycled pages written over, not handed back and faulted in again;
                    // `self.alloc` gives large blocks their huge-page advice before the write
                    let p = unsafe { self.alloc(layout) };
                    if !p.is_null() {
                        // SAFETY: a non-null block from `alloc` holds `layout.size()` bytes
                        unsafe { ::std::ptr::write_bytes(p, 0, layout.size()) };
                    }
                    return p;
                }
                let p = unsafe { JE.alloc_zeroed(layout) };
                $crate::memory::advise_huge_pages(p, layout.size());
                p
            }

            #[inline]
            unsafe fn dealloc(&self, ptr: *mut u8, layout: ::std::alloc::Layout) {
                unsafe { JE.dealloc(ptr, layout) }
            }

            #[inline]
            unsafe fn realloc(
                &self,
                ptr: *mut u8,
                layout: ::std::alloc::Layout,
                new_size: usize,
            ) -> *mut u8 {
                let p = unsafe { JE.realloc(ptr, layout, new_size) };
                $crate::memory::advise_huge_pages(p, new_size);
                p
            }
        }

        #[global_allocator]
        static ALLOC: Allocator = Allocator;

        #[allow(non_upper_case_globals)]
        #[unsafe(export_name = "_rjem_malloc_conf")]
        pub static malloc_conf: &[u8; 54] =
            b"metadata_thp:auto,dirty_decay_ms:-1,muzzy_decay_ms:-1\0";

        /// Tune jemalloc's page keeping ([`automodel_core::memory::tune_jemalloc`]) and
        /// register [`jemalloc_release`] for [`automodel_core::memory::ResidentLimit`]; call it
        /// first thing in `main`.
        fn jemalloc_setup() {
            $crate::memory::tune_jemalloc(::tikv_jemalloc_sys::mallctl);
            $crate::memory::set_release_hook(jemalloc_release);
        }

        /// Return every arena's kept (dirty and muzzy) pages to the kernel.
        fn jemalloc_release() -> bool {
            // `arena.<MALLCTL_ARENAS_ALL>.purge`
            const PURGE_ALL: &[u8] = b"arena.4096.purge\0";
            // SAFETY: a NUL-terminated name; purge reads and writes nothing.
            unsafe {
                ::tikv_jemalloc_sys::mallctl(
                    PURGE_ALL.as_ptr().cast(),
                    ::std::ptr::null_mut(),
                    ::std::ptr::null_mut(),
                    ::std::ptr::null_mut(),
                    0,
                ) == 0
            }
        }
    };
}

/// Send the binary's `tracing` logs to stderr, filtered by `RUST_LOG`, with colour codes only
/// when stderr is a terminal and `NO_COLOR` is unset or empty. Call it at the start of `main`.
///
/// The binary depends on `tracing-subscriber` (with its `env-filter` feature).
#[macro_export]
macro_rules! init_stderr_logs {
    () => {{
        let color = ::std::io::IsTerminal::is_terminal(&::std::io::stderr())
            && ::std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        ::tracing_subscriber::fmt()
            .with_env_filter(::tracing_subscriber::EnvFilter::from_default_env())
            .with_ansi(color)
            .with_writer(::std::io::stderr)
            .init();
    }};
}

pub use backend::{AutodiffBackend, Backend};
pub use config::ConfigError;
pub use device::DeviceSpec;
pub use error::{MediaError, ReadError, WeightError, read_file};

/// Seed `B`'s random generator on `device` and the CPU backend's, which random initialisation
/// draws from on every backend ([`init::Initializer`]), so one seed gives the same weights on the
/// CPU and on a GPU.
pub fn seed<B: burn::tensor::backend::Backend>(device: &B::Device, seed: u64) {
    use burn::tensor::backend::Backend as _;
    CpuBackend::seed(&Default::default(), seed);
    B::seed(device, seed);
}

/// The CPU backend used by tests and CI.
pub type CpuBackend = burn::backend::Flex;
/// The CPU backend with gradient tracking.
pub type CpuAutodiff = burn::backend::Autodiff<burn::backend::Flex>;

/// Burn's CUDA backend (GPU training and inference).
#[cfg(feature = "cuda")]
pub type CudaBackend = burn::backend::Cuda;
/// The CUDA backend with gradient tracking.
#[cfg(feature = "cuda")]
pub type CudaAutodiff = burn::backend::Autodiff<burn::backend::Cuda>;

/// Burn's wgpu backend with fusion (Vulkan, Metal or DX12; Mesa's software Vulkan on a machine
/// without a GPU).
#[cfg(feature = "wgpu")]
pub type WgpuBackend = burn::backend::Wgpu;
/// The wgpu backend with gradient tracking.
#[cfg(feature = "wgpu")]
pub type WgpuAutodiff = burn::backend::Autodiff<burn::backend::Wgpu>;
