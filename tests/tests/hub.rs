//! Loading by Hub repo id from the local Hugging Face cache (no network).

#[path = "e2e/common/mod.rs"]
mod common;

use automodel_core::CpuBackend as B;
use automodel_gemma3n::Gemma3nForConditionalGeneration;
use automodel_models::AutoModel;
use burn::tensor::DType;
use common::case;

#[test]
fn repo_ids_resolve_through_the_local_cache() {
    let cache = tempfile::tempdir().unwrap();
    let base = cache.path().join("models--tiny-org--gemma-3n-tiny");
    let snap = base.join("snapshots/0123abcd");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(base.join("refs")).unwrap();
    std::fs::write(base.join("refs/main"), "0123abcd").unwrap();
    for f in ["config.json", "model.safetensors", "generation_config.json"] {
        std::fs::copy(case("multimodal").join(f), snap.join(f)).unwrap();
    }
    // SAFETY: this test binary has a single test; nothing else reads the environment concurrently.
    unsafe {
        std::env::set_var("HF_HUB_CACHE", cache.path());
        std::env::set_var("HF_HUB_OFFLINE", "1");
    }
    let dev = Default::default();
    let m = match AutoModel::<B>::from_hub("tiny-org/gemma-3n-tiny", None, &dev, DType::F32) {
        Ok(AutoModel::Gemma3n(m)) => m,
        Ok(other) => panic!("built {}", other.class_name()),
        Err(e) => panic!("{e}"),
    };
    let local =
        Gemma3nForConditionalGeneration::<B>::from_pretrained(case("multimodal"), &dev, DType::F32)
            .unwrap();
    let ids = [vec![2i64, 105, 130, 131, 107]];
    assert_eq!(
        common::text_logits(&m, &ids),
        common::text_logits(&local, &ids)
    );

    let err = AutoModel::<B>::from_hub("tiny-org/absent", None, &dev, DType::F32)
        .err()
        .expect("absent")
        .to_string();
    assert!(
        err.contains("not in the local Hub cache") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
    let err = AutoModel::<B>::from_hub("not a repo", None, &dev, DType::F32)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("not a Hub repo id"), "{err}");
}
