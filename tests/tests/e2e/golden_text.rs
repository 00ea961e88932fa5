//! The text decoder against Hugging Face: every check of the `text`, `generate` and `text_bf16`
//! golden cases (tolerances from reference/README.md).

use crate::common;

fn run_case(case: &str) -> Vec<automodel_parity::Check> {
    common::passing_checks(case)
}

#[test]
fn text_forward_and_every_gradient() {
    let r = run_case("text");
    let names: Vec<&str> = r.iter().map(|c| c.name.as_str()).collect();
    for must in [
        "logits",
        "loss",
        "last_hidden_state",
        "per_layer_inputs",
        "per_layer_token_embeds",
        "inputs_embeds",
    ] {
        assert!(names.contains(&must), "{must} not checked");
    }
    assert_eq!(
        names
            .iter()
            .filter(|n| n.starts_with("hidden_states."))
            .count(),
        7
    );
    assert_eq!(
        names
            .iter()
            .filter(|n| n.starts_with("trace.text."))
            .count(),
        9
    );
    // 149 text parameters, every one with a gradient in the reference.
    assert_eq!(names.iter().filter(|n| n.starts_with("grad.")).count(), 149);
}

#[test]
fn greedy_generation_cached_and_uncached() {
    let r = run_case("generate");
    let names: Vec<&str> = r.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "generated_ids",
            "sequences",
            "step_logits",
            "nocache_logits"
        ]
    );
}

#[test]
fn bf16_smoke() {
    let r = run_case("text_bf16");
    assert_eq!(r.len(), 1);
}
