//! Choosing where a model runs: `cpu`, `cuda[:N]` or `wgpu[:N]`.
//!
//! [`DeviceSpec`] parses the user's choice; [`run_on`] calls a [`OnDevice`] job with the backend
//! and device it names. CUDA needs the `cuda` feature and wgpu the `wgpu` feature; without
//! them, asking for that device is a clear error, never a silent fall-back to the CPU. A wgpu
//! device is looked for before the job starts ([`wgpu_adapters`]), so a machine without one
//! gets an error naming what was looked for instead of a panic inside the backend.

use std::fmt;
use std::str::FromStr;

use crate::AutodiffBackend;

/// Where to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// Burn's `flex` CPU backend.
    #[default]
    Cpu,
    /// Burn's CUDA backend on GPU `N`.
    Cuda(usize),
    /// Burn's wgpu backend (Vulkan, Metal or DX12) on the adapter named.
    Wgpu(WgpuAdapter),
}

/// Which wgpu adapter: `wgpu` (the best one), `wgpu:N` (discrete GPU `N`) or `wgpu:cpu` (a
/// software adapter such as Mesa's llvmpipe).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WgpuAdapter {
    Best,
    Discrete(usize),
    Cpu,
}

/// A device this build cannot use, or a spelling it does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error(
        "unknown device `{0}` (expected `cpu`, `cuda`, `cuda:N`, `wgpu`, `wgpu:N` or `wgpu:cpu`)"
    )]
    Unknown(String),
    #[error(
        "device `{0}` needs wgpu, and this build has no wgpu support: rebuild with `--features wgpu`"
    )]
    NoWgpu(DeviceSpec),
    #[error("{0}")]
    NoAdapter(String),
    #[error("{device} cannot compute in {dtype}: {reason}")]
    Dtype {
        device: String,
        dtype: String,
        reason: &'static str,
    },
    #[error(
        "device `{0}` needs CUDA, and this build has no CUDA support: rebuild with `--features cuda`"
    )]
    NoCuda(DeviceSpec),
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceSpec::Wgpu(WgpuAdapter::Best) => write!(f, "wgpu"),
            DeviceSpec::Wgpu(WgpuAdapter::Discrete(n)) => write!(f, "wgpu:{n}"),
            DeviceSpec::Wgpu(WgpuAdapter::Cpu) => write!(f, "wgpu:cpu"),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;

    /// `cpu`, `cuda` (GPU 0), `cuda:N`, `wgpu`, `wgpu:N` or `wgpu:cpu`. A device whose backend
    /// the build lacks is refused.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unknown = || DeviceError::Unknown(s.to_string());
        let spec = match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => DeviceSpec::Cpu,
            "cuda" | "gpu" => DeviceSpec::Cuda(0),
            "wgpu" => DeviceSpec::Wgpu(WgpuAdapter::Best),
            "wgpu:cpu" => DeviceSpec::Wgpu(WgpuAdapter::Cpu),
            other => {
                if let Some(n) = other.strip_prefix("cuda:") {
                    DeviceSpec::Cuda(n.parse().map_err(|_| unknown())?)
                } else if let Some(n) = other.strip_prefix("wgpu:") {
                    DeviceSpec::Wgpu(WgpuAdapter::Discrete(n.parse().map_err(|_| unknown())?))
                } else {
                    return Err(unknown());
                }
            }
        };
        match spec {
            DeviceSpec::Cuda(_) if !cfg!(feature = "cuda") => Err(DeviceError::NoCuda(spec)),
            DeviceSpec::Wgpu(_) if !cfg!(feature = "wgpu") => Err(DeviceError::NoWgpu(spec)),
            _ => Ok(spec),
        }
    }
}

/// Refuse `dtype` on `device` when the backend cannot run it there (Burn's `supports_dtype`:
/// storage, conversion, arithmetic and matmuls), before any weight is loaded. Mesa's software
/// Vulkan, for one, has no bfloat16.
pub fn check_dtype<B: burn::tensor::backend::Backend>(
    device: &B::Device,
    dtype: burn::tensor::DType,
) -> Result<(), DeviceError> {
    if B::supports_dtype(device, dtype) {
        return Ok(());
    }
    Err(DeviceError::Dtype {
        device: format!("{} ({device:?})", B::name(device)),
        dtype: match dtype {
            burn::tensor::DType::BF16 => "bfloat16".into(),
            burn::tensor::DType::F16 => "float16".into(),
            other => format!("{other:?}"),
        },
        reason: "the backend reports the type unsupported on this device (its driver has no such \
                 arithmetic or matmul); use float32",
    })
}

/// A job generic over the backend (with gradients; use `B::InnerBackend` for inference).
pub trait OnDevice {
    type Output;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output;
}

/// Run `job` on the backend and device `spec` names.
pub fn run_on<J: OnDevice>(spec: DeviceSpec, job: J) -> Result<J::Output, DeviceError> {
    match spec {
        DeviceSpec::Cpu => Ok(job.run::<crate::CpuAutodiff>(Default::default())),
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(n) => {
            Ok(job.run::<crate::CudaAutodiff>(burn::backend::cuda::CudaDevice::new(n)))
        }
        #[cfg(not(feature = "cuda"))]
        DeviceSpec::Cuda(_) => Err(DeviceError::NoCuda(spec)),
        #[cfg(feature = "wgpu")]
        DeviceSpec::Wgpu(a) => Ok(job.run::<crate::WgpuAutodiff>(wgpu_device(a)?)),
        #[cfg(not(feature = "wgpu"))]
        DeviceSpec::Wgpu(_) => Err(DeviceError::NoWgpu(spec)),
    }
}

/// The wgpu device for `adapter`, after checking that such an adapter exists.
#[cfg(feature = "wgpu")]
pub fn wgpu_device(adapter: WgpuAdapter) -> Result<burn::backend::wgpu::WgpuDevice, DeviceError> {
    use burn::backend::wgpu::WgpuDevice;
    let found = wgpu_adapters();
    let kind = |k: &str| found.iter().filter(|(_, t)| *t == k).count();
    let listed = if found.is_empty() {
        "none".to_string()
    } else {
        found
            .iter()
            .map(|(name, kind)| format!("{name} ({kind})"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let missing = |what: String| {
        DeviceError::NoAdapter(format!(
            "no {what} found by wgpu (adapters found: {listed}); wgpu looks for Vulkan, Metal and \
             DX12 drivers: on Linux without a GPU, Mesa's software Vulkan (Debian/Ubuntu package \
             `mesa-vulkan-drivers`) provides one"
        ))
    };
    match adapter {
        WgpuAdapter::Best if found.is_empty() => Err(missing("adapter".into())),
        WgpuAdapter::Best => Ok(WgpuDevice::DefaultDevice),
        WgpuAdapter::Cpu if kind("cpu") == 0 => Err(missing("software (CPU) adapter".into())),
        WgpuAdapter::Cpu => Ok(WgpuDevice::Cpu),
        WgpuAdapter::Discrete(n) if kind("discrete GPU") <= n => {
            Err(missing(format!("discrete GPU number {n}")))
        }
        WgpuAdapter::Discrete(n) => Ok(WgpuDevice::DiscreteGpu(n)),
    }
}

/// The adapters wgpu finds on this machine: `(name, kind)`, kind one of `discrete GPU`,
/// `integrated GPU`, `virtual GPU`, `cpu`, `other`.
#[cfg(feature = "wgpu")]
pub fn wgpu_adapters() -> Vec<(String, &'static str)> {
    // the backends Burn's wgpu backend uses (Vulkan, Metal, DX12), not OpenGL
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::PRIMARY,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapters = block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY));
    adapters
        .into_iter()
        .map(|a| {
            let info = a.get_info();
            let kind = match info.device_type {
                wgpu::DeviceType::DiscreteGpu => "discrete GPU",
                wgpu::DeviceType::IntegratedGpu => "integrated GPU",
                wgpu::DeviceType::VirtualGpu => "virtual GPU",
                wgpu::DeviceType::Cpu => "cpu",
                wgpu::DeviceType::Other => "other",
            };
            (format!("{} [{:?}]", info.name, info.backend), kind)
        })
        .collect()
}

/// Wait for a future that wgpu's native backends complete without waking (adapter lookup).
#[cfg(feature = "wgpu")]
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}

/// Run `job` like [`run_on`], on an autodiff backend with Burn's balanced checkpointing: in the
/// backward pass memory-bound operations (element-wise, norms, activations) are recomputed from
/// their inputs instead of keeping their outputs from the forward pass; compute-bound ones
/// (matmuls) keep theirs. Same gradients, less activation memory, some recomputation.
pub fn run_on_checkpointed<J: OnDevice>(
    spec: DeviceSpec,
    job: J,
) -> Result<J::Output, DeviceError> {
    use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
    match spec {
        DeviceSpec::Cpu => Ok(job
            .run::<burn::backend::Autodiff<crate::CpuBackend, BalancedCheckpointing>>(
                Default::default(),
            )),
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(n) => Ok(job
            .run::<burn::backend::Autodiff<crate::CudaBackend, BalancedCheckpointing>>(
                burn::backend::cuda::CudaDevice::new(n),
            )),
        #[cfg(not(feature = "cuda"))]
        DeviceSpec::Cuda(_) => Err(DeviceError::NoCuda(spec)),
        #[cfg(feature = "wgpu")]
        DeviceSpec::Wgpu(a) => Ok(job
            .run::<burn::backend::Autodiff<crate::WgpuBackend, BalancedCheckpointing>>(
                wgpu_device(a)?,
            )),
        #[cfg(not(feature = "wgpu"))]
        DeviceSpec::Wgpu(_) => Err(DeviceError::NoWgpu(spec)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses_what_the_build_cannot_run() {
        assert_eq!("cpu".parse::<DeviceSpec>(), Ok(DeviceSpec::Cpu));
        assert_eq!(
            "tpu".parse::<DeviceSpec>(),
            Err(DeviceError::Unknown("tpu".into()))
        );
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        let cuda = "cuda:1".parse::<DeviceSpec>();
        if cfg!(feature = "cuda") {
            assert_eq!(cuda, Ok(DeviceSpec::Cuda(1)));
        } else {
            let err = cuda.unwrap_err().to_string();
            assert!(err.contains("--features cuda"), "{err}");
        }
        for (text, adapter) in [
            ("wgpu", WgpuAdapter::Best),
            ("WGPU:2", WgpuAdapter::Discrete(2)),
            ("wgpu:cpu", WgpuAdapter::Cpu),
        ] {
            let got = text.parse::<DeviceSpec>();
            if cfg!(feature = "wgpu") {
                assert_eq!(got, Ok(DeviceSpec::Wgpu(adapter)));
                assert_eq!(got.unwrap().to_string(), text.to_ascii_lowercase());
            } else {
                let err = got.unwrap_err().to_string();
                assert!(err.contains("--features wgpu"), "{err}");
            }
        }
        assert!("wgpu:x".parse::<DeviceSpec>().is_err());
        struct Dtype;
        impl OnDevice for Dtype {
            type Output = String;
            fn run<B: AutodiffBackend>(self, device: B::Device) -> String {
                format!("{device:?}")
            }
        }
        assert!(run_on(DeviceSpec::Cpu, Dtype).is_ok());
        // the CPU backend runs every float type
        for dt in [burn::tensor::DType::F32, burn::tensor::DType::BF16] {
            check_dtype::<crate::CpuBackend>(&Default::default(), dt).unwrap();
        }
    }
}
