#!/usr/bin/env python3
"""The PyTorch side of `cargo xtask bench --baseline`.

Runs one workload that `cargo xtask bench` describes in a JSON job file (the same token ids,
shapes, dtype, threads, LoRA settings and optimizer as our side) with PyTorch + transformers
(+ peft), SDPA attention, and prints one line `BENCH_RESULT {json}` in the format of the Rust
`Measure`:

* training step = forward with labels (transformers' loss), backward,
  `clip_grad_norm_(1.0)`, `torch.optim.AdamW(lr=1e-5)` (PyTorch's defaults: eps 1e-8,
  weight decay 0.01), `zero_grad`;
* generation = `model.generate(..., do_sample=False)` of exactly `new_tokens` tokens with the
  KV cache.

Times are the median (with min and max) of `steps` after `warmup`; peak memory is the
process's resident peak over the measured steps (`VmHWM`, reset first) on CPU, and
`torch.cuda.max_memory_allocated` on CUDA.

Usage: python3 xtask/bench/baseline.py JOB.json
"""

import json
import os
import statistics
import sys
import time


def reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mib():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def build_model(job, torch, dtype, device):
    wl = job["workload"]
    if wl["model"] == "gemma-3-270m":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            job["model_dir"], dtype=dtype, attn_implementation="sdpa"
        )
    else:
        from transformers import Gemma3nConfig, Gemma3nForConditionalGeneration

        cfg = Gemma3nConfig.from_dict(job["config"])
        torch.manual_seed(0)
        with torch.device(device):
            model = Gemma3nForConditionalGeneration._from_config(
                cfg, attn_implementation="sdpa", dtype=dtype
            )
        # the weights our side builds: the counter formula, seed 0 (reference/counter_weights.py)
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../reference"))
        from counter_weights import fill_model_

        fill_model_(model, 0)
    return model.to(device)


def main():
    with open(sys.argv[1]) as f:
        job = json.load(f)
    wl, opts = job["workload"], job["opts"]

    import torch
    import transformers

    torch.set_num_threads(opts["threads"])
    torch.manual_seed(0)
    device = "cuda" if wl["device"] == "cuda" else "cpu"
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[wl["dtype"]]
    stack = f"torch {torch.__version__}, transformers {transformers.__version__}"
    model = build_model(job, torch, dtype, device) if wl["model"] != "kernel" else None

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def reset_peak():
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        else:
            reset_peak_rss()

    def peak():
        if device == "cuda":
            return torch.cuda.max_memory_allocated() / 2**20
        return peak_rss_mib()

    times, loss = [], None
    if wl["model"] == "kernel":
        # Burn's kernel against PyTorch's: matmul [m, k] x [k, n], or exp over [m, k]
        m, k, n = wl["batch"], wl["seq_len"], wl["new_tokens"]

        def fill(r, c):
            i = torch.arange(r * c, dtype=torch.int64)
            return (((i * 7919) % 1000).to(torch.float32) / 1000.0 - 0.5).reshape(r, c).to(
                device=device, dtype=dtype
            )

        a = fill(m, k)
        b = fill(k, n) if wl["mode"] == "matmul" else None
        with torch.inference_mode():
            for i in range(opts["warmup"] + opts["steps"]):
                if i == opts["warmup"]:
                    reset_peak()
                t0 = time.perf_counter()
                out = a @ b if b is not None else torch.exp(a)
                sync()
                if i >= opts["warmup"]:
                    times.append(time.perf_counter() - t0)
                del out
        tokens = 1
    elif wl["mode"] == "generate":
        model.eval()
        prompt = torch.tensor(job["prompt"], device=device)
        n = wl["new_tokens"]
        with torch.inference_mode():
            for i in range(opts["warmup"] + opts["steps"]):
                if i == opts["warmup"]:
                    reset_peak()
                t0 = time.perf_counter()
                out = model.generate(
                    prompt,
                    attention_mask=torch.ones_like(prompt),
                    max_new_tokens=n,
                    min_new_tokens=n,
                    do_sample=False,
                    use_cache=True,
                    pad_token_id=0,
                )
                sync()
                if i >= opts["warmup"]:
                    times.append(time.perf_counter() - t0)
                assert out.shape[1] - prompt.shape[1] == n, out.shape
        tokens = wl["batch"] * n
    else:
        if wl["mode"] == "lora":
            import peft

            stack += f", peft {peft.__version__}"
            lcfg = job["lora"]
            model = peft.get_peft_model(
                model,
                peft.LoraConfig(
                    r=lcfg["r"],
                    lora_alpha=lcfg["lora_alpha"],
                    lora_dropout=lcfg["lora_dropout"],
                    target_modules=lcfg["target_modules"],
                ),
            )
        else:
            for p in model.parameters():
                p.requires_grad_(True)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-5)
        b = job["batch"]
        ids = torch.tensor(b["input_ids"], device=device)
        labels = torch.tensor(b["labels"], device=device)
        kwargs = {}
        if b.get("image_side"):
            side = b["image_side"]
            n = ids.shape[0] * 3 * side * side
            px = torch.tensor([((i * 7919) % 1000) / 1000.0 for i in range(n)], dtype=dtype)
            kwargs["pixel_values"] = px.reshape(ids.shape[0], 3, side, side).to(device)
        for i in range(opts["warmup"] + opts["steps"]):
            if i == opts["warmup"]:
                reset_peak()
            t0 = time.perf_counter()
            out = model(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                labels=labels,
                **kwargs,
            )
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss = out.loss.item()
            sync()
            if i >= opts["warmup"]:
                times.append(time.perf_counter() - t0)
        tokens = ids.numel()

    median = statistics.median(times)
    result = {
        "median_s": median,
        "min_s": min(times),
        "max_s": max(times),
        "tokens_per_s": tokens / median,
        "peak_mem_mib": peak(),
        "loss": loss,
        "threads": opts["threads"],
        "mfu": None,
        "stack": stack,
    }
    print("BENCH_RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
