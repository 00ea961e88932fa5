//! The multi-scale fusion adapter: resize the last stages to the highest resolution, concatenate,
//! a UIR feed-forward to 2048 channels, pool (or resize) to the output grid, RMS norm.

use automodel_core::Backend;
use automodel_core::init::Initializer;
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::module::avg_pool2d;

use crate::blocks::Uir;
use crate::config::UirArgs;
use crate::conv::RmsNorm2d;

/// timm `MobileNetV5MultiScaleFusionAdapter`.
#[derive(Module, Debug)]
pub struct Msfa<B: Backend> {
    pub ffn: Uir<B>,
    pub norm: RmsNorm2d<B>,
    #[module(skip)]
    pub output_resolution: usize,
}

impl<B: Backend> Msfa<B> {
    pub fn new(
        init: &Initializer<B>,
        in_chs: usize,
        out_chs: usize,
        output_resolution: usize,
        eps: f64,
    ) -> Self {
        // expansion 2, no depthwise convs, no layer scale, no skip
        let ffn = UirArgs {
            dw_kernel_size_start: 0,
            dw_kernel_size_mid: 0,
            dw_kernel_size_end: 0,
            exp_ratio: 2.0,
            stride: 1,
            out_chs,
            noskip: true,
        };
        Self {
            ffn: Uir::new(init, in_chs, &ffn, false, eps),
            norm: RmsNorm2d::new(init, out_chs, eps),
            output_resolution,
        }
    }

    /// `inputs`: feature maps, the first at the highest resolution.
    pub fn forward(&self, inputs: Vec<Tensor<B, 4>>) -> Tensor<B, 4> {
        let [_, _, hh, hw] = inputs[0].dims();
        let resized: Vec<Tensor<B, 4>> = inputs
            .into_iter()
            .map(|x| {
                let [_, _, h, w] = x.dims();
                if h < hh || w < hw {
                    resize(x, hh, hw, Interpolation::Nearest)
                } else {
                    x
                }
            })
            .collect();
        let mut y = self.ffn.forward(Tensor::cat(resized, 1));
        let r = self.output_resolution;
        if hh != r || hw != r {
            y = if hh % r != 0 || hw % r != 0 {
                resize(y, r, r, Interpolation::Bilinear)
            } else {
                let (sh, sw) = (hh / r, hw / r);
                avg_pool2d(y, [sh, sw], [sh, sw], [0, 0], true, false)
            };
        }
        self.norm.forward(y)
    }
}

/// Interpolation modes of `F.interpolate` used by the adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interpolation {
    /// `mode="nearest"`: source index `floor(i · in / out)`.
    Nearest,
    /// `mode="bilinear", align_corners=False`, no antialiasing.
    Bilinear,
}

/// Resize `[N, C, H, W]` to `[N, C, oh, ow]` as `F.interpolate` does, written as two small
/// interpolation matrices so that it is exact, differentiable and backend-independent.
pub fn resize<B: Backend>(
    x: Tensor<B, 4>,
    oh: usize,
    ow: usize,
    mode: Interpolation,
) -> Tensor<B, 4> {
    let [_, _, h, w] = x.dims();
    let device = x.device();
    let dtype = x.dtype();
    let mh = Tensor::<B, 2>::from_data(
        TensorData::new(interp_matrix(h, oh, mode), [oh, h]),
        (&device, dtype),
    );
    let mw = Tensor::<B, 2>::from_data(
        TensorData::new(interp_matrix(w, ow, mode), [ow, w]),
        (&device, dtype),
    );
    // y = Mh · x · Mwᵀ over the two spatial dimensions
    let y = mh.unsqueeze::<4>().matmul(x);
    y.matmul(mw.transpose().unsqueeze::<4>())
}

/// Row `o` holds the weights of the source pixels of output pixel `o`.
fn interp_matrix(n_in: usize, n_out: usize, mode: Interpolation) -> Vec<f32> {
    let mut m = vec![0.0f32; n_out * n_in];
    let scale = n_in as f32 / n_out as f32;
    for o in 0..n_out {
        match mode {
            Interpolation::Nearest => {
                let src = ((o as f32 * scale).floor() as usize).min(n_in - 1);
                m[o * n_in + src] = 1.0;
            }
            Interpolation::Bilinear => {
                let src = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (src.floor() as usize).min(n_in - 1);
                let i1 = (i0 + 1).min(n_in - 1);
                let l1 = src - i0 as f32;
                m[o * n_in + i0] += 1.0 - l1;
                m[o * n_in + i1] += l1;
            }
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    type B = automodel_core::CpuBackend;

    #[test]
    fn nearest_doubles_and_bilinear_interpolates() {
        let dev = Default::default();
        let x = Tensor::<B, 4>::from_floats([[[[1.0, 2.0], [3.0, 4.0]]]], &dev);
        let y = resize(x.clone(), 4, 4, Interpolation::Nearest)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert_eq!(&y[..8], &[1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 2.0, 2.0]);
        let y = resize(x, 4, 4, Interpolation::Bilinear)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        // torch: F.interpolate([[1,2],[3,4]], size=4, mode="bilinear") first row
        assert_eq!(&y[..4], &[1.0, 1.25, 1.75, 2.0]);
        assert_eq!(&y[12..], &[3.0, 3.25, 3.75, 4.0]);
    }
}
