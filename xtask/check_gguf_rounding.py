"""Why llama.cpp's top-1 parts from ours on the same quantized file: a diagnostic beside
`cargo xtask check-gguf`.

llama.cpp's CPU backend does not multiply a quantized weight by the activations as they are: it
first rounds the activations to the weight's "vec_dot_type" (ggml-cpu.c's type traits) — 8-bit
blocks of 256 values with a float scale (Q8_K) for Q4_K/Q6_K weights, 8-bit blocks of 32 with an
F16 scale (Q8_0) for Q5_0/Q8_0 weights, F16 for F16 weights — and its GELU reads a table indexed
by the input rounded to F16 and holding F16 values (`GGML_GELU_FP16` in ggml-cpu/vec.h). We
compute in F32 on the dequantized weights. This script runs a Gemma 3 GGUF file through Hugging
Face's Gemma 3 (the model our CPU parity tests match) in F32 three ways — as we do, with the
activations rounded as llama.cpp rounds them, and with its GELU table too — on the sequences
llama.cpp argmaxes and highest logits that `cargo xtask check-gguf --out DIR` leaves in DIR, and
prints how often each agrees with llama.cpp's top-1 and how far its logits are from llama.cpp's
(the largest difference over llama.cpp's 20 highest logits: at the first position, `<bos>`,
where attention sees one position and every weight but the query and key projections counts,
and over all positions).

    python xtask/check_gguf_rounding.py DIR [TYPE ...]     # TYPE: f16, q8_0, q4_k_m (default: all found)

Needs torch, transformers (>= 5) and gguf (PyPI)."""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader
from gguf.quants import dequantize
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

# the activation type ggml-cpu rounds to before a product with a weight of each type
VEC_DOT = {Q.F32: None, Q.F16: "f16", Q.BF16: "bf16", Q.Q8_0: "q8_0", Q.Q5_0: "q8_0",
           Q.Q4_K: "q8_K", Q.Q6_K: "q8_K"}


def nearest_int(x: torch.Tensor) -> torch.Tensor:
    # ggml's nearest_int (and AVX's _mm256_round_ps): round half to even, as torch.round does
    return torch.round(x)


def round_q8_0(x: torch.Tensor) -> torch.Tensor:
    # quantize_row_q8_0 (x86): d = amax/127 stored as F16, q = round(x * 127/amax)
    b = x.reshape(-1, 32)
    amax = b.abs().amax(dim=1, keepdim=True)
    d = amax / 127.0
    inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    q = nearest_int(b * inv)
    return (q * d.half().float()).reshape(x.shape)


def round_q8_k(x: torch.Tensor) -> torch.Tensor:
    # quantize_row_q8_K_ref: the signed value of largest magnitude maps to -127, d = 1/iscale (F32)
    b = x.reshape(-1, 256)
    idx = b.abs().argmax(dim=1, keepdim=True)
    mx = torch.gather(b, 1, idx)
    zero = mx == 0
    iscale = torch.where(zero, torch.zeros_like(mx), -127.0 / torch.where(zero, torch.ones_like(mx), mx))
    q = torch.clamp(nearest_int(iscale * b), max=127)
    d = torch.where(zero, torch.zeros_like(mx), 1.0 / torch.where(zero, torch.ones_like(iscale), iscale))
    return (q * d).reshape(x.shape)


ROUND = {
    None: lambda x: x,
    "f16": lambda x: x.half().float(),
    "bf16": lambda x: x.bfloat16().float(),
    "q8_0": round_q8_0,
    "q8_K": round_q8_k,
}


class Rounded(torch.nn.Module):
    """A linear layer whose input is rounded as llama.cpp rounds it for this weight type."""

    def __init__(self, linear: torch.nn.Linear, kind):
        super().__init__()
        self.linear, self.kind, self.on = linear, kind, False

    def forward(self, x):
        return self.linear(ROUND[self.kind](x) if self.on else x)


class GeluTable(torch.nn.Module):
    """ggml_vec_geglu_f32 with GGML_GELU_FP16: 0 below -10, x above 10, else the F16 table."""

    def forward(self, x):
        h = x.half().float()
        g = 0.5 * h * (1.0 + torch.tanh(0.7978845608028654 * h * (1.0 + 0.044715 * h * h)))
        y = g.half().float()
        return torch.where(x <= -10.0, torch.zeros_like(x), torch.where(x >= 10.0, x, y))


def load(path: Path):
    r = GGUFReader(str(path))

    def meta(key):
        f = r.fields[f"gemma3.{key}"]
        return f.parts[f.data[0]][0]

    tensors = {t.name: t for t in r.tensors}
    vocab = int(tensors["token_embd.weight"].shape[1])
    n_layer = int(meta("block_count"))
    cfg = Gemma3TextConfig(
        vocab_size=vocab, hidden_size=int(meta("embedding_length")),
        intermediate_size=int(meta("feed_forward_length")), num_hidden_layers=n_layer,
        num_attention_heads=int(meta("attention.head_count")),
        num_key_value_heads=int(meta("attention.head_count_kv")),
        head_dim=int(meta("attention.key_length")), rms_norm_eps=float(meta("attention.layer_norm_rms_epsilon")),
        max_position_embeddings=int(meta("context_length")), sliding_window=int(meta("attention.sliding_window")),
        query_pre_attn_scalar=int(meta("attention.key_length")),
        # llama.cpp's gemma3: every sixth layer global, local RoPE base 10,000
        layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n_layer)],
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": float(meta("rope.freq_base"))},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
        tie_word_embeddings=True,
    )
    model = Gemma3ForCausalLM(cfg).float().eval()
    names = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
             "attn_k_norm": "self_attn.k_norm", "attn_norm": "input_layernorm",
             "post_attention_norm": "post_attention_layernorm", "ffn_norm": "pre_feedforward_layernorm",
             "post_ffw_norm": "post_feedforward_layernorm", "ffn_gate": "mlp.gate_proj",
             "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    state, types = {}, {}
    for name, t in tensors.items():
        w = dequantize(t.data, t.tensor_type).astype(np.float32)
        w = w.reshape([int(s) for s in reversed(t.shape)])
        if name == "token_embd.weight":
            hf = "model.embed_tokens.weight"
        elif name == "output_norm.weight":
            hf = "model.norm.weight"
        else:
            _, i, part, _ = name.split(".")
            hf = f"model.layers.{i}.{names[part]}.weight"
        if name.endswith("norm.weight"):
            w = w - 1.0  # the converter stores Gemma's norms as 1 + w
        state[hf] = torch.from_numpy(w)
        types[hf] = t.tensor_type
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.tie_weights()
    # wrap every product with a weight in the rounding llama.cpp applies to its input
    wrapped = []
    for i, layer in enumerate(model.model.layers):
        for owner, attr in [(layer.self_attn, "q_proj"), (layer.self_attn, "k_proj"), (layer.self_attn, "v_proj"),
                            (layer.self_attn, "o_proj"), (layer.mlp, "gate_proj"), (layer.mlp, "up_proj"),
                            (layer.mlp, "down_proj")]:
            kind = VEC_DOT[types[f"model.layers.{i}.{'self_attn' if owner is layer.self_attn else 'mlp'}.{attr}.weight"]]
            m = Rounded(getattr(owner, attr), kind)
            setattr(owner, attr, m)
            wrapped.append(m)
    head = Rounded(model.lm_head, VEC_DOT[types["model.embed_tokens.weight"]])
    model.lm_head = head
    wrapped.append(head)
    return model, wrapped


def main(out_dir: str, *types: str) -> None:
    out = Path(out_dir)
    types = types or [t for t in ("f16", "q8_0", "q4_k_m") if (out / f"model-{t}.gguf").exists()]
    print("top-1 = llama.cpp's (max |Δ logit| at the first position; over all positions)\n")
    print("| type | ours (F32 activations) | + llama.cpp's activation rounding | + its F16 GELU table | positions whose top two are within 0.25 / 0.5 in our logits |")
    print("|---|---|---|---|---|")
    for ty in types:
        job = json.load(open(out / f"job-{ty}.json"))
        theirs = json.load(open(out / f"llama-{ty}.json"))
        model, wrapped = load(out / f"model-{ty}.gguf")
        gelu, table = model.model.layers[0].mlp.act_fn, GeluTable()
        cells, close = [], None
        for mode in ("plain", "rounded", "gelu"):
            for m in wrapped:
                m.on = mode != "plain"
            for layer in model.model.layers:
                layer.mlp.act_fn = table if mode == "gelu" else gelu
            agree = total = 0
            first = every = 0.0
            for p, l in zip(job["prompts"], theirs["prompts"]):
                seq = torch.tensor([p["sequence"]])
                with torch.no_grad():
                    logits = model(seq).logits[0]
                top1 = logits.argmax(dim=-1).tolist()
                if mode == "plain":
                    top2 = logits.topk(2, dim=-1).values
                    gap = (top2[:, 0] - top2[:, 1]).tolist()
                    close = [a + sum(g < lim for g in gap) for a, lim in zip(close or [0, 0], (0.25, 0.5))]
                agree += sum(int(a == b) for a, b in zip(top1, l["argmax"]))
                for pos, top in enumerate(l.get("top", [])):
                    d = max(abs(float(logits[pos, i]) - v) for i, v in top)
                    every = max(every, d)
                    first = max(first, d) if pos == 0 else first
                total += len(top1)
            cells.append(f"{100 * agree / total:.1f} % ({agree}/{total}; {first:.4f}; {every:.2f})")
        cells.append(f"{close[0]} / {close[1]}")
        print(f"| {ty} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(*sys.argv[1:])
