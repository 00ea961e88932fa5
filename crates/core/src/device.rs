//! Choosing where a model runs: `cpu`, `cuda` or `cuda:N`.
//!
//! [`DeviceSpec`] parses the user's choice; [`run_on`] calls a [`OnDevice`] job with the backend
//! and device it names. CUDA needs the `cuda` feature; without it, asking for CUDA is a clear
//! error, never a silent fall-back to the CPU.

use std::fmt;
use std::str::FromStr;

use burn::tensor::backend::AutodiffBackend;

/// Where to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// Burn's `flex` CPU backend.
    #[default]
    Cpu,
    /// Burn's CUDA backend on GPU `N`.
    Cuda(usize),
}

/// A device this build cannot use, or a spelling it does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device `{0}` (expected `cpu`, `cuda` or `cuda:N`)")]
    Unknown(String),
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
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;

    /// `cpu`, `cuda` (GPU 0) or `cuda:N`. CUDA is refused when the build has no CUDA backend.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let spec = match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => DeviceSpec::Cpu,
            "cuda" | "gpu" => DeviceSpec::Cuda(0),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => DeviceSpec::Cuda(n),
                _ => return Err(DeviceError::Unknown(s.to_string())),
            },
        };
        if matches!(spec, DeviceSpec::Cuda(_)) && !cfg!(feature = "cuda") {
            return Err(DeviceError::NoCuda(spec));
        }
        Ok(spec)
    }
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
        struct Dtype;
        impl OnDevice for Dtype {
            type Output = String;
            fn run<B: AutodiffBackend>(self, device: B::Device) -> String {
                format!("{device:?}")
            }
        }
        assert!(run_on(DeviceSpec::Cpu, Dtype).is_ok());
    }
}
