//! The LoRA golden cases (`reference/golden-peft`, written by Hugging Face PEFT): adapters
//! loaded from PEFT's files give PEFT's logits, loss, adapter gradients, merged weights and
//! merged logits; the real 270M's adapter too.

use crate::common;

use automodel_core::CpuAutodiff;

#[test]
fn every_lora_case_matches_peft() {
    let dir = automodel_parity::golden_dir().join("../golden-peft");
    let gguf = automodel_parity::gemma3_270m_path();
    assert!(
        gguf.is_file(),
        "{} is missing: run `cargo xtask fetch-model gemma-3-270m` first",
        gguf.display()
    );
    let reports =
        automodel_parity::run::<CpuAutodiff>(&dir, &Default::default(), None, Some(&gguf)).unwrap();
    let mut names: Vec<&str> = reports.iter().map(|r| r.case.as_str()).collect();
    names.sort();
    assert_eq!(names, ["lora_gemma3_270m", "lora_multimodal", "lora_text"]);
    for r in &reports {
        common::assert_all_pass(r);
        let grads = r
            .checks
            .iter()
            .filter(|c| c.name.starts_with("grad."))
            .count();
        let merged = r
            .checks
            .iter()
            .filter(|c| c.name.starts_with("merged."))
            .count();
        let want = match r.case.as_str() {
            "lora_text" => (76, 38),
            "lora_multimodal" => (224, 112),
            _ => (4, 0),
        };
        assert_eq!((grads, merged), want, "{}", r.case);
    }
}
