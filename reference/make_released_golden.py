#!/usr/bin/env python3
"""Golden case at Gemma 3n's released widths: E2B's text decoder (hidden 2048, MLP 8192, the
262 400-token vocabulary, the 262 144-row per-layer embedding table) with fewer decoder layers,
the released MobileNet-V5 300M tower at 768x768 and the released conformer.

Weights come from the counter formula (`counter_weights.py`, the same bits as
automodel-core's `weights::counter`), so the case folder holds no weights: `config.json`,
`inputs.safetensors`, `outputs.safetensors` and `meta.json` (whose `weights` field names the
formula and seed). What is saved is what fits in a repository: the loss over every labelled
token, the logits of the last positions, the last hidden state, the tower outputs and merged
features, and the gradients of a chosen set of tensors (every other parameter frozen on both
sides). The same inputs then run with the model in bfloat16; PyTorch's bf16-vs-fp32 spread
(bf16-rounded weights computed in fp32) is saved beside it as the bf16 yardstick.

    .venv-ref/bin/python reference/make_released_golden.py --out reference/golden-released \
        [--layers 10] [--seed 1234]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from counter_weights import FORMULA, fill_model_  # noqa: E402
from make_golden import (  # noqa: E402
    PromptBuilder,
    Recorder,
    diff_stats,
    model_kwargs_from_inputs,
    set_attn_implementation,
    synth_audio,
    synth_image,
    versions,
    write_case,
)
from transformers import Gemma3nConfig, Gemma3nForConditionalGeneration  # noqa: E402
from transformers.models.gemma3n.feature_extraction_gemma3n import Gemma3nAudioFeatureExtractor  # noqa: E402

# The released tokenizer's structural ids (google/gemma-3n-E2B-it tokenizer_config.json).
SPECIAL = {"pad": 0, "eos": 1, "bos": 2, "start_of_turn": 105, "end_of_turn": 106, "newline": 107, "newline2": 108}
LOGITS_TAIL = 2  # positions of logits saved (the full tensor is T x 262400 floats)


def released_e2b(layers: int) -> Gemma3nConfig:
    """E2B (Gemma3nConfig::released("E2B") on the Rust side) with `layers` decoder layers: the
    released layer pattern (4 sliding, 1 full) cut to length, the last 40 % sharing KV caches and
    the first third sparse, as in the 30-layer model."""
    pattern = ["sliding_attention"] * 4 + ["full_attention"]
    layer_types = [pattern[i % 5] for i in range(layers)]
    shared = (layers * 10) // 30 + (1 if layers % 3 else 0)
    shared = max(2, min(shared, layers - 5))
    sparse = max(1, layers // 3)
    text = {
        "model_type": "gemma3n_text",
        "num_hidden_layers": layers,
        "intermediate_size": [8192] * layers,
        "layer_types": layer_types,
        "num_kv_shared_layers": shared,
        "activation_sparsity_pattern": [0.95] * sparse + [0.0] * (layers - sparse),
    }
    return Gemma3nConfig(
        text_config=text,
        vision_config={"model_type": "gemma3n_vision"},
        audio_config={"model_type": "gemma3n_audio"},
        audio_soft_tokens_per_image=188,
        vision_soft_tokens_per_image=256,
        boi_token_id=255_999,
        eoi_token_id=262_144,
        image_token_id=262_145,
        boa_token_id=256_000,
        eoa_token_id=262_272,
        audio_token_id=262_273,
        eos_token_id=[1, 106],
        tie_word_embeddings=True,
    )


def _worst(ref, a, b):
    """The larger of the two runs' distances to `ref` (diff_stats of the worse one)."""
    da, db = diff_stats(ref, a), diff_stats(ref, b)
    return da if da["max_abs"] >= db["max_abs"] else db


def grad_names(model, cfg) -> list[str]:
    """The tensors whose gradients are saved: small ones from every component (the vision
    tower's MSFA norms, the audio tower's first and last norms, the multimodal embedders' norms,
    four text layers' norms, AltUp router and coefficients, LAuReL and per-layer input norm, the
    first layer's per-layer gate, the final norms). Each is reached by backpropagating through
    everything after it."""
    tc = cfg.text_config
    last = tc.num_hidden_layers - 1
    first_shared = tc.num_hidden_layers - tc.num_kv_shared_layers
    lm = "model.language_model."
    want = [
        # the tower's last module: a gradient through the 768x768 stem would keep every stage's
        # activations for the backward (gigabytes at this resolution)
        "model.vision_tower.timm_model.msfa.ffn.pw_exp.bn.weight",
        "model.vision_tower.timm_model.msfa.ffn.pw_proj.bn.weight",
        "model.vision_tower.timm_model.msfa.norm.weight",
        "model.audio_tower.subsample_conv_projection.conv_0.norm.weight",
        f"model.audio_tower.conformer.{cfg.audio_config.conf_num_hidden_layers - 1}.norm.weight",
        "model.embed_vision.soft_embedding_norm.weight",
        "model.embed_audio.soft_embedding_norm.weight",
        f"{lm}per_layer_projection_norm.weight",
        f"{lm}norm.weight",
        f"{lm}layers.0.per_layer_input_gate.weight",
    ]
    for i in sorted({0, first_shared - 1, first_shared, last}):
        p = f"{lm}layers.{i}."
        want += [
            f"{p}input_layernorm.weight",
            f"{p}post_feedforward_layernorm.weight",
            f"{p}self_attn.q_norm.weight",
            f"{p}altup.modality_router.weight",
            f"{p}altup.correction_coefs.weight",
            f"{p}laurel.linear_left.weight",
            f"{p}post_per_layer_input_norm.weight",
        ]
        if i < first_shared:
            want.append(f"{p}self_attn.k_norm.weight")
    names = dict(model.named_parameters())
    missing = [n for n in want if n not in names]
    if missing:
        raise SystemExit(f"parameters not in the model: {missing}")
    return want


def inputs_for(cfg, seed: int, text_words: int):
    rng = np.random.default_rng([seed, 46])
    recipe = {"special_tokens": SPECIAL, "plain_text_token_range": [1000, 250_000]}
    pb = PromptBuilder(recipe, cfg)
    ids, labels = pb.chat(rng, text_words // 2, 8, text_words // 2, media=["image", "audio"])
    batch = pb.batch([(ids, labels)])
    # pixel values k/256: exact in bfloat16, so the case stores them in half the bytes
    img = synth_image(rng, 768, 768)
    pv = torch.from_numpy(img).permute(2, 0, 1)[None].to(torch.float32) / 256.0
    wave = synth_audio(rng, 32_000)
    feats = Gemma3nAudioFeatureExtractor()([wave], return_tensors="pt")
    batch.update(
        pixel_values=pv,
        input_features=feats["input_features"].float(),
        input_features_mask=feats["input_features_mask"].bool(),
    )
    return batch


def run(model, inputs: dict, chosen: list[str], backward: bool):
    model.zero_grad(set_to_none=True)
    rec = Recorder(model, trace=False)
    try:
        with torch.set_grad_enabled(backward):
            out = model(**model_kwargs_from_inputs(inputs), labels=inputs["labels"], use_cache=False, return_dict=True)
            if backward:
                out.loss.backward()
    finally:
        rec.close()
    res = {
        "loss": out.loss.reshape(()).float(),
        "logits_tail": out.logits[:, -LOGITS_TAIL:].float(),
        "last_hidden_state": rec.store["last_hidden_state"].float(),
        "vision_tower_output": rec.store["vision_tower_output"].float(),
        "image_features": out.image_outputs.pooler_output.float(),
        "audio_tower_output": rec.store["audio_tower_output"].float(),
        "audio_tower_mask": rec.store["audio_tower_mask"],
        "audio_features": out.audio_outputs.pooler_output.float(),
    }
    if backward:
        params = dict(model.named_parameters())
        for n in chosen:
            g = params[n].grad
            if g is None:
                raise SystemExit(f"no gradient reached {n}")
            res[f"grad.{n}"] = g.float()
    return {k: v.detach().clone() for k, v in res.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--text-words", type=int, default=110, help="plain-text tokens around the media")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()

    cfg = released_e2b(args.layers)
    cfg._attn_implementation = "eager"
    model = Gemma3nForConditionalGeneration(cfg)
    n = fill_model_(model, args.seed)
    model.eval().float()
    print(f"[released] built and filled {n} tensors ({sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters) in {time.time() - t0:.0f} s")

    chosen = grad_names(model, cfg)
    for name, p in model.named_parameters():
        p.requires_grad_(name in chosen)
    inputs = inputs_for(cfg, args.seed, args.text_words)
    T = inputs["input_ids"].shape[1]
    t1 = time.time()
    out32 = run(model, inputs, chosen, backward=True)
    print(f"[released] f32 forward+backward over {T} tokens: loss {out32['loss'].item():.6f} ({time.time() - t1:.0f} s)")

    model.to(torch.bfloat16)
    t1 = time.time()
    out16 = run(model, inputs, chosen, backward=False)
    # a second legitimate bf16 evaluation order (SDPA attention): how far PyTorch's own bf16 runs
    # spread on this model
    set_attn_implementation(model, "sdpa")
    out16_sdpa = run(model, inputs, chosen, backward=False)
    set_attn_implementation(model, "eager")
    model.float()  # the bf16-rounded weights, computed in fp32
    out16_32 = run(model, inputs, chosen, backward=False)
    print(f"[released] bf16 loss {out16['loss'].item():.6f} (sdpa {out16_sdpa['loss'].item():.6f}), bf16 weights in fp32 {out16_32['loss'].item():.6f} ({time.time() - t1:.0f} s)")

    outputs = dict(out32)
    # PyTorch's bf16 outputs are summarised by their distance to the fp32 computation (meta's
    # bf16.spread); only the fp32 computation is stored
    bf16_keys = ["loss", "logits_tail", "image_features", "audio_features"]
    for k in bf16_keys:
        outputs[f"bf16_fp32_compute.{k}"] = out16_32[k]
    tc = cfg.text_config
    saved_inputs = {k: v for k, v in inputs.items() if k != "pixel_values"}
    saved_inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
    meta = {
        "case": "released",
        "description": f"Gemma 3n E2B widths with {args.layers} decoder layers, the released vision and audio towers; image (768x768) + audio (2 s) + text, batch of 1; float32 forward+backward and bfloat16 forward",
        "seed": args.seed,
        "weights": {"formula": FORMULA, "seed": args.seed},
        "versions": versions(),
        "attn_implementation": "eager",
        "model_mode": "eval() (no dropout)",
        "dtype": "float32",
        "sequence_length": T,
        "logits_tail_positions": LOGITS_TAIL,
        "text_layer_types": list(tc.layer_types),
        "num_kv_shared_layers": tc.num_kv_shared_layers,
        "activation_sparsity_pattern": list(tc.activation_sparsity_pattern),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "trainable": chosen,
        "loss": out32["loss"].item(),
        "num_label_tokens": int((inputs["labels"][:, 1:] != -100).sum()),
        "bf16": {
            "loss": out16["loss"].item(),
            "loss_fp32_compute": out16_32["loss"].item(),
            "spread": {
                k: _worst(out16_32[k], out16[k], out16_sdpa[k])
                for k in bf16_keys
            },
            "spread_eager": {k: diff_stats(out16_32[k], out16[k]) for k in bf16_keys},
            "spread_sdpa": {k: diff_stats(out16_32[k], out16_sdpa[k]) for k in bf16_keys},
        },
        "pixel_values": "k/256 for a synthetic 768x768 uint8 image (stored as bfloat16, exact)",
    }
    out_dir = os.path.join(args.out, f"e2b_{args.layers}_layers")
    os.makedirs(out_dir, exist_ok=True)
    cfg_dict = cfg.to_dict()
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg_dict, f, indent=2, sort_keys=True)
        f.write("\n")
    write_case(out_dir, saved_inputs, outputs, meta)
    print(f"[released] wrote {out_dir} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
