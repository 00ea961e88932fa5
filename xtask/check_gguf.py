"""llama.cpp's side of `cargo xtask check-gguf`: load a GGUF file with llama-cpp-python (which
builds llama.cpp from source: `pip install llama-cpp-python==0.3.36`), and for each prompt of
the job report llama.cpp's tokenization of its text, its greedy continuation of our prompt ids,
and its top-1 token at every position of a given sequence (with its 20 highest logits there, for
`xtask/check_gguf_rounding.py`).

    python xtask/check_gguf.py JOB.json OUT.json

JOB: {"model": path, "n_ctx": int, "prompts": [{"text", "ids", "new_tokens", "sequence"}]}.
The KV cache is kept in F32 so that only the weights and ggml's arithmetic differ from ours."""
import json
import sys

try:
    import numpy as np
    from llama_cpp import Llama, llama_cpp
except ImportError as e:  # the caller names the missing package
    sys.exit(f"check_gguf.py needs llama-cpp-python and numpy ({e}); pip install llama-cpp-python==0.3.36")


def main(job_path: str, out_path: str) -> None:
    job = json.load(open(job_path))
    llm = Llama(model_path=job["model"], n_ctx=job["n_ctx"], n_batch=job["n_ctx"], n_threads=2,
                logits_all=True, verbose=False, type_k=0, type_v=0)
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
        scores = np.asarray(llm.scores[: len(seq)])
        argmax = [int(i) for i in np.argmax(scores, axis=1)]
        top = np.argsort(-scores, axis=1)[:, :20]
        top = [[[int(i), float(row[i])] for i in ids] for row, ids in zip(scores, top)]
        out["prompts"].append({"tokenized": toks, "greedy": greedy, "argmax": argmax, "top": top})
    json.dump(out, open(out_path, "w"))


if __name__ == "__main__":
    main(*sys.argv[1:3])
