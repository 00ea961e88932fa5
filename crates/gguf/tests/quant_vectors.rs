//! The quantizers against ggml's own: `vectors/make.py` wrote each type's input rows and the
//! blocks `ggml_quantize_chunk` (libggml-base, no importance matrix) made of them; ours must be
//! the same bytes, block for block.

use std::path::Path;

use automodel_gguf::GgmlType;
use automodel_gguf::quant::quantize;

fn check(name: &str, ty: GgmlType) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let input = std::fs::read(dir.join(format!("{name}.in"))).unwrap();
    let want = std::fs::read(dir.join(format!("{name}.out"))).unwrap();
    let x: Vec<f32> = input
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let got = quantize(ty, &x).unwrap();
    assert_eq!(got.len(), want.len(), "{name}: size");
    let (per, size) = ty.block().unwrap();
    let bad: Vec<usize> = (0..want.len() / size)
        .filter(|b| got[b * size..(b + 1) * size] != want[b * size..(b + 1) * size])
        .collect();
    assert!(
        bad.is_empty(),
        "{name}: {} of {} blocks differ from ggml's, first block {} (values {}..)",
        bad.len(),
        want.len() / size,
        bad[0],
        bad[0] * per
    );
}

#[test]
fn q8_0_equals_ggml() {
    check("q8_0", GgmlType::Q8_0);
}

#[test]
fn q5_0_equals_ggml() {
    check("q5_0", GgmlType::Q5_0);
}

#[test]
fn q4_k_equals_ggml() {
    check("q4_k", GgmlType::Q4K);
}

#[test]
fn q6_k_equals_ggml() {
    check("q6_k", GgmlType::Q6K);
}
