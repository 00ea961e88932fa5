"""llama.cpp's side of `cargo xtask check-gguf`: load a GGUF file with llama-cpp-python (which
builds llama.cpp from source: `pip install llama-cpp-python==0.3.36`), and for each prompt of
the job report llama.cpp's tokenization of its text, its greedy continuation of our prompt ids,
and its top-1 token at every position of a given sequence (with its 20 highest logits there, for
`xtask/check_gguf_rounding.py`).

    python xtask/check_gguf.py JOB.json OUT.json

JOB: {"model": path, "n_ctx": int, "prompts": [{"text", "ids", "new_tokens", "sequence"}],
"reference_model": optional path}. The KV cache is kept in F32 so that only the weights and ggml's
arithmetic differ from ours.

With "reference_model" (the F16 export of the same model) it also measures the file as
`llama-perplexity --kl-divergence` does: at every position of each sequence, the KL divergence
of this file's next-token distribution from the reference's, KL(P_ref || P_file), and whether
both pick the same top token. Non-finite logits are counted (they must be none)."""
import json
import sys

try:
    import numpy as np
    from llama_cpp import Llama, llama_cpp
except ImportError as e:  # the caller names the missing package
    sys.exit(f"check_gguf.py needs llama-cpp-python and numpy ({e}); pip install llama-cpp-python==0.3.36")


def cpu_has_amx() -> bool:
    try:
        return any(l.startswith("flags") and " amx_int8" in l for l in open("/proc/cpuinfo"))
    except OSError:
        return False


def without_amx_repack():
    """llama.cpp 0.3.36's AMX weight repacking (its "extra buffer type", taken on CPUs with
    AMX-INT8) repacks the token embedding table too, and `decode` then crashes (SIGSEGV) on our
    Q8_0 export of the 270M (seen on an Intel Xeon with AMX, 2026-12-07): on such CPUs the
    weights stay in their GGUF layout (`use_extra_bufts = false`), so llama.cpp runs its plain
    CPU kernels, as it does on every CPU without AMX."""
    from llama_cpp import llama_cpp as lib
    import llama_cpp.llama as llama_mod

    default = lib.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    llama_mod.llama_cpp.llama_model_default_params = params
    print("check_gguf.py: this CPU has AMX; llama.cpp's AMX weight repacking is off", file=sys.stderr)


def log_softmax(x):
    m = np.max(x, axis=1, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=1, keepdims=True))


def main(job_path: str, out_path: str) -> None:
    job = json.load(open(job_path))
    if cpu_has_amx():
        without_amx_repack()
    llm = Llama(model_path=job["model"], n_ctx=job["n_ctx"], n_batch=job["n_ctx"], n_threads=2,
                logits_all=True, verbose=False, type_k=0, type_v=0)
    ref = None
    if job.get("reference_model"):
        ref = Llama(model_path=job["reference_model"], n_ctx=job["n_ctx"], n_batch=job["n_ctx"],
                    n_threads=2, logits_all=True, verbose=False, type_k=0, type_v=0)
    out = {"n_vocab": llm.n_vocab(), "prompts": []}
    for p in job["prompts"]:
        toks = llm.tokenize(p["text"].encode("utf-8"), add_bos=True, special=True)
        # greedy continuation of our prompt ids
        llm.reset()
        ids = list(p["ids"])
        llm.eval(ids)
        greedy = []
        for _ in range(p["new_tokens"]):
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            greedy.append(nxt)
            if nxt in (1, 106):  # <eos>, <end_of_turn>
                break
            llm.eval([nxt])
        # top-1 at every position of the given sequence (teacher forcing)
        llm.reset()
        seq = list(p["sequence"])
        llm.eval(seq)
        scores = np.array(llm.scores[: len(seq)], dtype=np.float32)
        nonfinite = int(np.count_nonzero(~np.isfinite(scores)))
        argmax = [int(i) for i in np.argmax(scores, axis=1)]
        top = np.argsort(-scores, axis=1)[:, :20]
        top = [[[int(i), float(row[i])] for i in ids] for row, ids in zip(scores, top)]
        entry = {"tokenized": toks, "greedy": greedy, "argmax": argmax, "top": top,
                 "nonfinite": nonfinite}
        if ref is not None:
            ref.reset()
            ref.eval(seq)
            base = np.array(ref.scores[: len(seq)], dtype=np.float64)
            entry["nonfinite"] += int(np.count_nonzero(~np.isfinite(base)))
            lp = log_softmax(scores.astype(np.float64))
            lb = log_softmax(base)
            kld = np.sum(np.exp(lb) * (lb - lp), axis=1)
            entry["kld"] = [float(x) for x in kld]
            entry["same_top"] = [bool(a == b) for a, b in zip(np.argmax(base, axis=1), argmax)]
        out["prompts"].append(entry)
    json.dump(out, open(out_path, "w"))


if __name__ == "__main__":
    main(*sys.argv[1:3])
