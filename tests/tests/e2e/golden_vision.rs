//! The vision tower and image processor against Hugging Face / timm.

use crate::common;

use automodel_core::Backend;
use automodel_core::pretrained::Pretrained;
use automodel_core::weights::SafeTensorsFiles;
use automodel_core::{CpuAutodiff, CpuBackend};
use automodel_vision::processor::{ImageProcessorConfig, load_image};
use automodel_vision::{Gemma3nVisionConfig, MobileNetV5Encoder, VISION_PREFIX};
use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use common::{case, max_diff};

fn checks(name: &str) -> Vec<automodel_parity::Check> {
    common::passing_checks(name)
}

/// The `image` case through the full model: tower output, every stage, the image features and
/// the 248 gradients the reference lists.
#[test]
fn image_case_matches_including_every_gradient() {
    let names: Vec<String> = checks("image").into_iter().map(|c| c.name).collect();
    for must in [
        "vision_tower_output",
        "image_features",
        "logits",
        "loss",
        "trace.vision.stem",
        "trace.vision.stage3",
    ] {
        assert!(names.iter().any(|n| n == must), "{must} not checked");
    }
    assert_eq!(
        names
            .iter()
            .filter(|n| n.starts_with("trace.vision.stage"))
            .count(),
        4
    );
    let grads = names
        .iter()
        .filter(|n| n.starts_with("grad.") && !n.ends_with("(zero in reference)"))
        .count();
    assert_eq!(grads, 248);
}

#[test]
fn image_processor_is_exact() {
    let names: Vec<String> = checks("image_processor")
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["resized_uint8", "pixel_values"]);
}

/// The processor from encoded files: PNG and JPEG decode, then the same pixels as HF.
#[test]
fn processor_from_image_files() {
    let dir = case("image_processor");
    let inputs = SafeTensorsFiles::open(dir.join("inputs.safetensors")).unwrap();
    let outputs = SafeTensorsFiles::open(dir.join("outputs.safetensors")).unwrap();
    let cfg = ImageProcessorConfig::from_file(dir.join("preprocessor_config.json")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for i in 0..3 {
        let raw = inputs.raw(&format!("image_{i}")).unwrap();
        let img =
            image::RgbImage::from_raw(raw.shape[1] as u32, raw.shape[0] as u32, raw.bytes.to_vec())
                .unwrap();
        let p = tmp.path().join(format!("img{i}.png"));
        img.save(&p).unwrap();
        paths.push(p);
    }
    let images: Vec<_> = paths.iter().map(|p| load_image(p).unwrap()).collect();
    let pv = cfg
        .preprocess::<CpuBackend>(&images, &Default::default())
        .unwrap();
    assert_eq!(pv.dims(), [3, 3, 128, 128]);
    let got = pv.into_data().to_vec::<f32>().unwrap();
    assert_eq!(
        got,
        outputs.to_f32_vec("pixel_values").unwrap(),
        "lossless PNG gives HF's pixels exactly"
    );

    // JPEG (lossy) and WebP (lossless) decode to RGB images of the right size.
    let raw = inputs.raw("image_0").unwrap();
    let img =
        image::RgbImage::from_raw(raw.shape[1] as u32, raw.shape[0] as u32, raw.bytes.to_vec())
            .unwrap();
    for ext in ["jpg", "webp"] {
        let p = tmp.path().join(format!("img0.{ext}"));
        img.save(&p).unwrap();
        let decoded = load_image(&p).unwrap();
        assert_eq!(
            (decoded.height, decoded.width),
            (raw.shape[0], raw.shape[1]),
            "{ext}"
        );
        let err = decoded
            .data
            .iter()
            .zip(raw.bytes)
            .map(|(a, b)| (*a as i32 - *b as i32).abs())
            .max()
            .unwrap();
        assert!(
            if ext == "webp" { err == 0 } else { err < 64 },
            "{ext}: max error {err}"
        );
    }

    // Errors name the file.
    let bad = tmp.path().join("broken.jpg");
    std::fs::write(&bad, b"\xff\xd8\xff\xe0 not really a jpeg").unwrap();
    let err = load_image(&bad).unwrap_err().to_string();
    assert!(err.contains("broken.jpg"), "{err}");
}

fn tower<B: Backend>(dtype: DType) -> MobileNetV5Encoder<B> {
    let dir = case("image");
    let cfg = Gemma3nVisionConfig::from_file(dir.join("config.json")).unwrap();
    let files = SafeTensorsFiles::open(dir.join("model.safetensors")).unwrap();
    MobileNetV5Encoder::from_files(&files, &cfg, &Default::default(), dtype).unwrap()
}

fn pixels<B: Backend>() -> Tensor<B, 4> {
    let inputs = SafeTensorsFiles::open(case("image").join("inputs.safetensors")).unwrap();
    let pv = inputs.to_f32_vec("pixel_values").unwrap();
    Tensor::from_data(TensorData::new(pv, [2, 3, 128, 128]), &Default::default())
}

#[test]
fn every_tower_parameter_gets_a_gradient() {
    let t = tower::<CpuAutodiff>(DType::F32);
    let out = t.forward(pixels());
    let grads = out.powi_scalar(2).mean().backward();
    common::assert_every_parameter_learns(&t, &grads, "image", VISION_PREFIX);
}

#[test]
fn bf16_tower_runs_in_bf16_close_to_f32() {
    let f32_out = tower::<CpuBackend>(DType::F32).forward(pixels());
    let bf_out = tower::<CpuBackend>(DType::BF16).forward(pixels());
    assert_eq!(bf_out.dtype(), DType::BF16);
    let a = f32_out.into_data().to_vec::<f32>().unwrap();
    let b = bf_out.cast(DType::F32).into_data().to_vec::<f32>().unwrap();
    // A smoke test, as for the text model's bf16 case: bf16 rounding through every block
    // (timm's RmsNorm2d does not upcast) moves single values by a few percent of the range.
    let mean = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32;
    assert!(
        max_diff(&a, &b) < 1.0 && mean < 0.05,
        "bf16 vs f32: max {} mean {mean}",
        max_diff(&a, &b)
    );
}

#[test]
fn missing_tower_weights_are_reported() {
    let cfg = Gemma3nVisionConfig::from_file(case("image").join("config.json")).unwrap();
    // A checkpoint holding only the stem weight: every other tower tensor is reported.
    let tmp = tempfile::tempdir().unwrap();
    let mut m = automodel_core::weights::TensorMap::new();
    m.insert_data(
        "model.vision_tower.timm_model.conv_stem.conv.weight",
        TensorData::new(vec![0f32; 16 * 27], [16, 3, 3, 3]),
    );
    m.save(tmp.path(), None).unwrap();
    let files = SafeTensorsFiles::open(tmp.path()).unwrap();
    let err =
        MobileNetV5Encoder::<CpuBackend>::from_files(&files, &cfg, &Default::default(), DType::F32)
            .unwrap_err();
    // every problem is in the error; its text lists the first ones and counts the rest
    let automodel_vision::VisionError::Weights(automodel_core::WeightError::In { error, .. }) =
        &err
    else {
        panic!("{err}")
    };
    let automodel_core::WeightError::Mismatch { problems } = error.as_ref() else {
        panic!("{err}")
    };
    assert!(
        problems.iter().any(|p| p.to_string()
            == "missing `model.vision_tower.timm_model.msfa.norm.weight` (expected shape [2048])"),
        "{err}"
    );
    let err = err.to_string();
    assert!(err.contains("more ("), "{err}");
    let stored = SafeTensorsFiles::open(case("image").join("model.safetensors")).unwrap();
    let tower_keys = stored
        .names()
        .filter(|k| k.starts_with("model.vision_tower."))
        .count();
    assert!(
        err.contains(&format!("{} problem(s)", tower_keys - 1)),
        "{err}"
    );
}

/// The released architecture: 294,126,912 parameters and a [N, 2048, 16, 16] output (run at 64×64,
/// which also takes the adapter's bilinear branch).
#[test]
fn released_architecture_size_and_output_shape() {
    let cfg = Gemma3nVisionConfig::default();
    let t = MobileNetV5Encoder::<CpuBackend>::init(&cfg, &Default::default(), DType::F32).unwrap();
    assert_eq!(t.num_params(), 294_126_912);
    let x = Tensor::<CpuBackend, 4>::zeros([1, 3, 64, 64], &Default::default()) + 0.5;
    assert_eq!(t.forward(x).dims(), [1, 2048, 16, 16]);
}
