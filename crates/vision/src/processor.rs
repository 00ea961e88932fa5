//! The Gemma 3n image processor (HF `SiglipImageProcessor` with the torchvision backend):
//! decode → RGB → antialiased bilinear resize on uint8 (torchvision's integer path) →
//! `x · (1/255)` → optional `(x − mean) / std` → `[N, 3, H, W]`.

use std::path::Path;

use automodel_core::Backend;
use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use serde::Deserialize;

use automodel_core::config::deserialize;

use crate::error::VisionError;

/// `preprocessor_config.json` fields the processor uses (HF names and defaults of the released
/// Gemma 3n checkpoints).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ImageProcessorConfig {
    pub do_convert_rgb: bool,
    pub do_resize: bool,
    pub size: ImageSize,
    /// PIL resampling filter id; only 2 (bilinear) is supported.
    pub resample: u32,
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub image_mean: Vec<f32>,
    pub image_std: Vec<f32>,
}

/// Target size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct ImageSize {
    pub height: usize,
    pub width: usize,
}

impl Default for ImageProcessorConfig {
    fn default() -> Self {
        Self {
            do_convert_rgb: true,
            do_resize: true,
            size: ImageSize {
                height: 768,
                width: 768,
            },
            resample: 2,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: false,
            image_mean: vec![0.5; 3],
            image_std: vec![0.5; 3],
        }
    }
}

/// An RGB image, `height × width × 3` bytes row-major (HWC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub height: usize,
    pub width: usize,
    pub data: Vec<u8>,
}

impl ImageProcessorConfig {
    /// Read `preprocessor_config.json` (other processors' fields in the file are ignored).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, VisionError> {
        let path = path.as_ref();
        let cfg: Self = automodel_core::config::read_config(path, deserialize)?;
        cfg.validate().map_err(|e| match e {
            VisionError::Config(c) => VisionError::Config(c.in_file(path)),
            other => other,
        })?;
        Ok(cfg)
    }

    /// Check the settings.
    pub fn validate(&self) -> Result<(), VisionError> {
        if self.do_resize && self.resample != 2 {
            return Err(VisionError::config(
                "resample",
                format!("{} is not supported (only 2 = bilinear)", self.resample),
            ));
        }
        if self.do_resize && (self.size.height == 0 || self.size.width == 0) {
            return Err(VisionError::config(
                "size",
                "height and width must be positive",
            ));
        }
        if self.do_normalize {
            if self.image_mean.len() != 3 || self.image_std.len() != 3 {
                return Err(VisionError::config(
                    "image_mean",
                    "image_mean and image_std need 3 values",
                ));
            }
            if self.image_std.contains(&0.0) {
                return Err(VisionError::config("image_std", "must not contain 0"));
            }
        }
        Ok(())
    }

    /// Pixel values `[N, 3, H, W]` (float32) for images of equal output size.
    pub fn preprocess<B: Backend>(
        &self,
        images: &[RgbImage],
        device: &B::Device,
    ) -> Result<Tensor<B, 4>, VisionError> {
        let (planes, shape) = self.preprocess_host(images)?;
        Ok(Tensor::from_data(
            TensorData::new(planes, shape),
            (device, DType::F32),
        ))
    }

    /// [`Self::preprocess`] on the host: the values and their shape `[N, 3, H, W]` (what data
    /// workers prepare ahead of the step).
    pub fn preprocess_host(
        &self,
        images: &[RgbImage],
    ) -> Result<(Vec<f32>, [usize; 4]), VisionError> {
        if images.is_empty() {
            return Err(VisionError::Input("no images given".into()));
        }
        let mut planes = Vec::new();
        let mut shape = None;
        for img in images {
            let img = if self.do_resize {
                resize_bilinear_aa(img, self.size.height, self.size.width)
            } else {
                img.clone()
            };
            if *shape.get_or_insert((img.height, img.width)) != (img.height, img.width) {
                return Err(VisionError::Input(
                    "images of different sizes cannot be batched without do_resize".into(),
                ));
            }
            planes.extend(self.to_chw(&img));
        }
        let (h, w) = shape.unwrap_or((0, 0));
        Ok((planes, [images.len(), 3, h, w]))
    }

    /// Rescale and normalise one HWC image into CHW floats.
    fn to_chw(&self, img: &RgbImage) -> Vec<f32> {
        let (h, w) = (img.height, img.width);
        let factor = self.rescale_factor as f32;
        let mut out = vec![0.0f32; 3 * h * w];
        for c in 0..3 {
            for i in 0..h * w {
                let mut v = img.data[i * 3 + c] as f32;
                if self.do_rescale {
                    v *= factor;
                }
                if self.do_normalize {
                    v = (v - self.image_mean[c]) / self.image_std[c];
                }
                out[c * h * w + i] = v;
            }
        }
        out
    }
}

/// Decode a PNG, JPEG or WebP file into RGB (alpha dropped, grey replicated).
pub fn load_image(path: impl AsRef<Path>) -> Result<RgbImage, VisionError> {
    let path = path.as_ref();
    let bytes = automodel_core::read_file(path)?;
    decode_image(&bytes, &path.display().to_string())
}

/// The widest and tallest image accepted, in pixels.
pub const MAX_IMAGE_SIDE: u32 = 16_384;
/// The most memory one decoded image may take.
pub const MAX_IMAGE_BYTES: u64 = 1 << 30;

/// Whether a JPEG's last scan (`FF DA`) is followed by its end-of-image marker (`FF D9`).
/// Decoders fill a cut file's missing rows with grey without a word, so this is checked first.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last = |marker: u8| bytes.windows(2).rposition(|w| w == [0xFF, marker]);
    match (last(0xDA), last(0xD9)) {
        (Some(sos), Some(eoi)) => eoi > sos,
        _ => false,
    }
}

/// Decode image bytes; `name` appears in errors. Corrupt or cut files, and images beyond
/// [`MAX_IMAGE_SIDE`] or [`MAX_IMAGE_BYTES`], are errors.
pub fn decode_image(bytes: &[u8], name: &str) -> Result<RgbImage, VisionError> {
    let err = |message: String| VisionError::Decode {
        kind: "image",
        name: name.to_string(),
        message,
    };
    let format = image::guess_format(bytes).map_err(|e| {
        err(format!(
            "unrecognised image format ({e}); expected PNG, JPEG or WebP"
        ))
    })?;
    if !matches!(
        format,
        image::ImageFormat::Png | image::ImageFormat::Jpeg | image::ImageFormat::WebP
    ) {
        return Err(err(format!(
            "{format:?} images are not supported; expected PNG, JPEG or WebP"
        )));
    }
    if format == image::ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(err(
            "the JPEG is cut short: its last scan has no end-of-image marker".into(),
        ));
    }
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_BYTES);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => err(format!(
            "the image is too large ({e}); at most {MAX_IMAGE_SIDE} pixels a side and {} MB decoded",
            MAX_IMAGE_BYTES / 1_000_000
        )),
        e => err(format!("cannot decode: {e}")),
    })?;
    let rgb = img.to_rgb8();
    let (w, h) = rgb.dimensions();
    if w == 0 || h == 0 {
        return Err(err("the image is empty".into()));
    }
    Ok(RgbImage {
        height: h as usize,
        width: w as usize,
        data: rgb.into_raw(),
    })
}

/// Antialiased bilinear resize of a uint8 image, as torch's uint8 CPU kernel computes it
/// (`_upsample_bilinear2d_aa` on uint8, used by torchvision): separable passes (horizontal then
/// vertical) with weights in 16-bit fixed point and a uint8 intermediate image.
pub fn resize_bilinear_aa(img: &RgbImage, out_h: usize, out_w: usize) -> RgbImage {
    let (h, w) = (img.height, img.width);
    let mut data = img.data.clone();
    let mut cur_w = w;
    if out_w != w {
        let taps = int_weights(w, out_w);
        let mut next = vec![0u8; h * out_w * 3];
        for y in 0..h {
            for (x, t) in taps.iter().enumerate() {
                for c in 0..3 {
                    let mut acc: i64 = 1 << (t.precision - 1);
                    for (j, &k) in t.weights.iter().enumerate() {
                        acc += data[(y * cur_w + t.start + j) * 3 + c] as i64 * k as i64;
                    }
                    next[(y * out_w + x) * 3 + c] = (acc >> t.precision).clamp(0, 255) as u8;
                }
            }
        }
        data = next;
        cur_w = out_w;
    }
    if out_h != h {
        let taps = int_weights(h, out_h);
        let mut next = vec![0u8; out_h * cur_w * 3];
        for (y, t) in taps.iter().enumerate() {
            for x in 0..cur_w {
                for c in 0..3 {
                    let mut acc: i64 = 1 << (t.precision - 1);
                    for (j, &k) in t.weights.iter().enumerate() {
                        acc += data[((t.start + j) * cur_w + x) * 3 + c] as i64 * k as i64;
                    }
                    next[(y * cur_w + x) * 3 + c] = (acc >> t.precision).clamp(0, 255) as u8;
                }
            }
        }
        data = next;
    }
    RgbImage {
        height: out_h,
        width: cur_w,
        data,
    }
}

/// The input window and fixed-point weights of one output pixel.
struct Taps {
    start: usize,
    weights: Vec<i16>,
    precision: u32,
}

/// Antialiased triangle-filter weights (support widened by the down-scale factor), normalised,
/// then converted to int16 with the largest precision that keeps every weight below 2^15.
fn int_weights(n_in: usize, n_out: usize) -> Vec<Taps> {
    let scale = n_in as f64 / n_out as f64;
    let support = if scale >= 1.0 { scale } else { 1.0 };
    let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    let mut float_taps = Vec::with_capacity(n_out);
    let mut w_max = 0.0f64;
    for i in 0..n_out {
        let center = scale * (i as f64 + 0.5);
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(n_in as i64) as usize;
        let mut ws: Vec<f64> = (xmin..xmax)
            .map(|j| {
                let x = ((j as f64 - center + 0.5) * invscale).abs();
                if x < 1.0 { 1.0 - x } else { 0.0 }
            })
            .collect();
        let total: f64 = ws.iter().sum();
        if total != 0.0 {
            for v in &mut ws {
                *v /= total;
                w_max = w_max.max(*v);
            }
        }
        float_taps.push((xmin, ws));
    }
    let mut precision = 0u32;
    while precision < 22 {
        let next = (0.5 + w_max * (1u64 << (precision + 1)) as f64) as i64;
        if next >= 1 << 15 {
            break;
        }
        precision += 1;
    }
    float_taps
        .into_iter()
        .map(|(start, ws)| Taps {
            start,
            weights: ws
                .into_iter()
                .map(|v| {
                    let v = v * (1u64 << precision) as f64;
                    (if v < 0.0 { v - 0.5 } else { v + 0.5 }) as i16
                })
                .collect(),
            precision,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_size_is_a_copy_and_constant_images_stay_constant() {
        let img = RgbImage {
            height: 5,
            width: 7,
            data: (0..105).map(|i| (i * 7 % 256) as u8).collect(),
        };
        assert_eq!(resize_bilinear_aa(&img, 5, 7), img);
        let flat = RgbImage {
            height: 9,
            width: 13,
            data: vec![200; 9 * 13 * 3],
        };
        let r = resize_bilinear_aa(&flat, 4, 20);
        assert!(r.data.iter().all(|&v| v == 200));
    }

    #[test]
    fn corrupt_images_name_the_file() {
        let err = decode_image(b"\x89PNG\r\n\x1a\nbroken", "cat.png")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cat.png"), "{err}");
        let err = decode_image(b"hello", "notes.txt").unwrap_err().to_string();
        assert!(
            err.contains("notes.txt") && err.contains("PNG, JPEG or WebP"),
            "{err}"
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        let cfg = ImageProcessorConfig {
            resample: 3,
            ..Default::default()
        };
        assert!(cfg.validate().unwrap_err().to_string().contains("resample"));
    }
}
