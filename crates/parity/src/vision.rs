//! The vision cases: `image_processor`, and the tower outputs of `image`.

use std::path::Path;

use automodel_vision::processor::{ImageProcessorConfig, RgbImage};

use crate::compare::{Check, Tolerance, compare};
use crate::tensors::{reference, values};
use crate::{ParityError, open};

/// `image_processor`: the resize on uint8 and the final pixel values.
pub fn processor(dir: &Path) -> Result<Vec<Check>, ParityError> {
    let inputs = open(dir, "inputs.safetensors")?;
    let outputs = open(dir, "outputs.safetensors")?;
    let cfg = ImageProcessorConfig::from_file(dir.join("preprocessor_config.json"))?;
    let mut images = Vec::new();
    let mut names: Vec<&str> = inputs.names().filter(|n| n.starts_with("image_")).collect();
    names.sort_by_key(|n| n["image_".len()..].parse::<usize>().unwrap_or(usize::MAX));
    for n in names {
        let raw = inputs.raw(n)?;
        if raw.shape.len() != 3 || raw.shape[2] != 3 {
            return Err(ParityError::Case {
                path: dir.into(),
                message: format!("`{n}` must be [h, w, 3] uint8"),
            });
        }
        images.push(RgbImage {
            height: raw.shape[0],
            width: raw.shape[1],
            data: raw.bytes.to_vec(),
        });
    }
    let mut checks = Vec::new();
    let (h, w) = (cfg.size.height, cfg.size.width);
    let mut resized = Vec::new();
    for img in &images {
        let r = automodel_vision::processor::resize_bilinear_aa(img, h, w);
        // HWC → CHW, as the reference stores it
        for c in 0..3 {
            resized.extend((0..h * w).map(|i| r.data[i * 3 + c] as f64));
        }
    }
    if outputs.contains("resized_uint8") {
        let (want, ws) = reference(&outputs, "resized_uint8")?;
        checks.push(compare(
            "resized_uint8",
            &resized,
            &[images.len(), 3, h, w],
            &want,
            &ws,
            Tolerance::Exact,
        ));
    }
    let pv = cfg.preprocess::<burn::backend::Flex>(&images, &Default::default())?;
    let (want, ws) = reference(&outputs, "pixel_values")?;
    let got = values(pv);
    checks.push(compare(
        "pixel_values",
        &got.0,
        &got.1,
        &want,
        &ws,
        Tolerance::Exact,
    ));
    Ok(checks)
}
