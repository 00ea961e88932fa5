"""The Gemma 3n text export in llama.cpp (docs/export.md, "Gemma 3n"): a random Gemma 3n of the
layer structure llama.cpp's `gemma3n` fixes, our export against llama.cpp's own converter, and
llama.cpp's logits against Hugging Face's. Run in this order (PY_HF: torch + transformers;
PY_LLAMA: llama-cpp-python + gguf; LLAMA_SRC: llama.cpp's sources with gguf-py):

  $PY_HF xtask/gemma3n_llama_cpp.py make DIR [--init 0.02]
  cp TOKENIZER_DIR/tokenizer*.json DIR/      # e.g. `automodel-cli convert` of the 270M GGUF
  automodel-cli export-gguf --model DIR --out ours.gguf --type f32
  PYTHONPATH=$LLAMA_SRC/gguf-py $PY_HF $LLAMA_SRC/convert_hf_to_gguf.py DIR --outfile ref.gguf --outtype f32
  $PY_LLAMA xtask/gemma3n_llama_cpp.py same-tensors ours.gguf ref.gguf
  $PY_HF xtask/gemma3n_llama_cpp.py logits-hf DIR hf.npy
  $PY_HF xtask/gemma3n_llama_cpp.py logits-hf DIR hf-as-llama.npy --as-llama-cpp
  $PY_LLAMA xtask/gemma3n_llama_cpp.py logits-llama ours.gguf llama.npy            # KV cache F32
  $PY_LLAMA xtask/gemma3n_llama_cpp.py logits-llama ours.gguf llama-f16kv.npy --f16-kv
  $PY_LLAMA xtask/gemma3n_llama_cpp.py compare hf.npy llama.npy   # (and the other pairs)

`--as-llama-cpp` computes two things as llama.cpp's `gemma3n` does instead of as Hugging Face
does: its GELU reads a table at the input rounded to F16 holding F16 values (`GGML_GELU_FP16`),
and its activation sparsity takes the standard deviation with n - 1 (HF: with n). `--f16-kv` is
llama.cpp's default KV cache (F16); without it the cache is F32.

Peak memory about 13 GB (the export holds the 1.5 B f32 weights twice); files about 6 GB each.
"""
import sys
from pathlib import Path

import numpy as np

LAYERS = 22  # llama.cpp: the first 20 layers own a KV cache
IDS = [2] + [int(x) for x in np.random.default_rng(0).integers(100, 200_000, size=40)]


def make(out, init):
    import torch
    from transformers import Gemma3nForCausalLM, Gemma3nTextConfig

    torch.manual_seed(0)
    types = ["full_attention" if (i + 1) % 5 == 0 else "sliding_attention" for i in range(LAYERS)]
    cfg = Gemma3nTextConfig(
        vocab_size=262_144, vocab_size_per_layer_input=262_144, hidden_size=64,
        hidden_size_per_layer_input=256, intermediate_size=[8192] * LAYERS,
        num_hidden_layers=LAYERS, num_kv_shared_layers=2, layer_types=types, laurel_rank=64,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32,
        activation_sparsity_pattern=[0.95] * 10 + [0.0] * (LAYERS - 10), sliding_window=16,
        max_position_embeddings=512, initializer_range=init)
    Gemma3nForCausalLM(cfg).eval().save_pretrained(out)


def logits_hf(model, out, *flags):
    import torch
    from transformers import Gemma3nForCausalLM
    from transformers.models.gemma3n import modeling_gemma3n

    as_llama = "--as-llama-cpp" in flags
    if as_llama:
        def gaussian_topk(self, x):  # llama.cpp's gaussian_topk: the std with n - 1
            normal = torch.distributions.normal.Normal(0, 1)
            mul = normal.icdf(torch.tensor(self.activation_sparsity, dtype=torch.float32)).type(x.dtype)
            cutoff = x.mean(-1, keepdim=True) + x.std(-1, keepdim=True, unbiased=True) * mul
            return torch.nn.functional.relu(x - cutoff)

        modeling_gemma3n.Gemma3nTextMLP._gaussian_topk = gaussian_topk
    m = Gemma3nForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    if as_llama:
        sys.path.insert(0, str(Path(__file__).parent))
        from check_gguf_rounding import GeluTable

        for module in list(m.modules()):
            if hasattr(module, "act_fn"):
                module.act_fn = GeluTable()
    with torch.no_grad():
        np.save(out, m(torch.tensor([IDS])).logits[0].numpy())


def logits_llama(gguf, out, *flags):
    from llama_cpp import Llama

    kv = 1 if "--f16-kv" in flags else 0  # GGML_TYPE_F16 / GGML_TYPE_F32
    llm = Llama(model_path=gguf, logits_all=True, n_ctx=128, verbose=False, type_k=kv, type_v=kv)
    llm.eval(IDS)
    np.save(out, np.array(llm.scores[: len(IDS)], dtype=np.float32))


def compare(a, b):
    a, b = np.load(a), np.load(b)
    d = np.abs(a - b).max(1)
    print(f"positions {len(d)}; max |difference| first {d[0]:.4f}, all {d.max():.4f}; "
          f"logits' std {a.std():.4f}; top-1 equal {(a.argmax(1) == b.argmax(1)).sum()}/{len(d)}")


def same_tensors(ours, ref):
    from gguf import GGUFReader

    a, b = GGUFReader(ours), GGUFReader(ref)
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    print("only in ours:", sorted(set(ta) - set(tb)))
    print("only in the converter's:", sorted(set(tb) - set(ta)))
    differ = []
    for n in sorted(set(ta) & set(tb)):
        x, y = ta[n], tb[n]
        if list(x.shape) != list(y.shape) or x.tensor_type != y.tensor_type:
            differ.append(n)
            continue
        step = 1 << 20
        if any((x.data[i:i + step] != y.data[i:i + step]).any() for i in range(0, x.data.shape[0], step)):
            differ.append(n)
    print(f"{len(set(ta) & set(tb))} tensors in both, {len(differ)} differ: {differ}")
    for k in sorted(set(a.fields) | set(b.fields)):
        if k.startswith(("gemma3n.", "general.architecture")):
            va = a.fields[k].contents() if k in a.fields else None
            vb = b.fields[k].contents() if k in b.fields else None
            if va != vb:
                print(f"metadata {k}: ours {va}, the converter's {vb}")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "make":
        make(args[0], float(args[2]) if len(args) > 2 and args[1] == "--init" else 0.02)
    elif cmd == "logits-hf":
        logits_hf(*args)
    elif cmd == "logits-llama":
        logits_llama(*args)
    elif cmd == "compare":
        compare(*args)
    elif cmd == "same-tensors":
        same_tensors(*args)
    else:
        sys.exit(__doc__)
