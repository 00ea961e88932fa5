"""Does Hugging Face's tiny Gemma 3n, from random weights, learn to transcribe clips?

The PyTorch side of the clip experiments in docs/data.md: `recipes/models/gemma3n-tiny` built by
transformers, initialised as automodel's `from_config` does (matrices N(0, 0.02), norm scales 1),
fed clips through transformers' own Gemma3nAudioFeatureExtractor. It prints how alike the audio
tower's first two soft tokens are across clips at initialisation, then trains with AdamW (clip
1.0) and prints the loss, and every 50 steps the loss and exact match on 40 fresh clips.

    [KIND=buzz|tone|band|chord] [DF=40] [NDIG=1] [TONE=0.45] [GAP=0.05] [N=10] [B=N] [RAND=1] \
        python xtask/bench/tiny_overfit_audio.py LR STEPS {all|frozen_tower}

KIND: each digit d as every harmonic of 100 + DF·d Hz up to 7 kHz (`buzz`, what the built-in
`tones` draws with DF=40, NDIG=2, TONE=0.3, GAP=0.1), a pure tone of 400 + 100·d Hz (`tone`, the
old `tones`), noise in the d-th tenth of the mel scale (`band`), or three tones spread over the
range (`chord`). N clips of NDIG digits (digit i of clip i unless RAND=1), batches of B drawn at
random. The answers' entropy without the clip is printed; a loss below it means the clips are
read. Needs torch, transformers and numpy.
"""
import math, os, random, sys
import numpy as np
import torch
from transformers import Gemma3nConfig, Gemma3nForConditionalGeneration
from transformers.models.gemma3n.feature_extraction_gemma3n import Gemma3nAudioFeatureExtractor

torch.manual_seed(0)
random.seed(0)
lr, steps, mode = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
env = lambda k, d: os.environ.get(k, d)
KIND, DF, NDIG = env("KIND", "buzz"), float(env("DF", "40")), int(env("NDIG", "1"))
TONE, GAP, N = float(env("TONE", "0.45")), float(env("GAP", "0.05")), int(env("N", "10"))
B = int(env("B", str(N)))
root = __import__("pathlib").Path(__file__).resolve().parents[2]
model = Gemma3nForConditionalGeneration(Gemma3nConfig.from_pretrained(root / "recipes/models/gemma3n-tiny")).float()
with torch.no_grad():
    for n, p in model.named_parameters():
        if p.ndim >= 2: p.normal_(0, 0.02)
        elif n.endswith("bias"): p.zero_()
        else: p.fill_(1.0)
fe, SR = Gemma3nAudioFeatureExtractor(), 16000
mel = lambda h: 2595 * np.log10(1 + h / 700)
imel = lambda m: 700 * (10 ** (m / 2595) - 1)

def clip(digits):
    out = []
    for d in digits:
        n = int(SR * TONE)
        t = np.arange(n) / SR
        if KIND == "tone":
            x = np.sin(2 * math.pi * (400 + 100 * d) * t)
        elif KIND == "buzz":
            f0 = 100 + DF * d
            x = sum(np.sin(2 * math.pi * k * f0 * t + random.random() * 2 * math.pi) for k in range(1, int(7000 / f0) + 1))
        elif KIND == "band":
            lo, hi = (imel(mel(100) + (mel(7500) - mel(100)) * e / 10) for e in (d, d + 1))
            fr = np.fft.rfftfreq(n, 1 / SR)
            sel = (fr >= lo) & (fr < hi)
            spec = np.zeros(n // 2 + 1, dtype=complex)
            spec[sel] = np.exp(1j * np.random.rand(sel.sum()) * 2 * math.pi)
            x = np.fft.irfft(spec, n)
        else:  # chord
            x = sum(np.sin(2 * math.pi * f * t) for f in (300 + 150 * d, 1800 + 350 * (d * 3 % 10), 4500 + 250 * (d * 7 % 10)))
        fade = np.minimum(np.minimum(np.arange(n), n - np.arange(n)) / 80.0, 1.0)
        out += [(0.3 + 0.3 * random.random()) * fade * x / np.abs(x).max(), np.zeros(int(SR * GAP))]
    return np.concatenate(out).astype(np.float32)

digs = [[random.randrange(10) if env("RAND", "") else (i + 3 * j) % 10 for j in range(NDIG)] for i in range(N)]
feat = fe([clip(d) for d in digs], return_tensors="pt", padding="longest")
xf, xm = feat["input_features"], feat["input_features_mask"]
with torch.no_grad():  # the tower takes True = padding; the model negates the processor's mask
    h = model.model.audio_tower(xf, ~xm, return_dict=True).last_hidden_state
    v = h[:, :2].flatten(1)
    c = torch.nn.functional.cosine_similarity(v[:, None], v[None], dim=-1)
    print(f"{h.shape[1]} soft tokens per clip; tower's first two, cosine across clips: mean "
          f"{c[~torch.eye(N, dtype=bool)].mean():.3f}, clips i and i+1: "
          + " ".join(f"{c[i, i + 1]:.2f}" for i in range(min(N, 10) - 1)))

AUD, BOA, EOA = 262273, 256000, 262272
BOS, SOT, EOT, NL, USER, MODEL = 2, 105, 106, 107, 2364, 4368
W = [1000 + i for i in range(10)]  # arbitrary fixed ids for the digits
prompt = [BOS, SOT, USER, NL, BOA] + [AUD] * 6 + [EOA, NL] + [3000, 3001, 3002, 3003, 3004] + [EOT, NL, SOT, MODEL, NL]
def batch(ds):
    ids = torch.tensor([prompt + [W[x] for x in d] + [EOT] for d in ds])
    labels = torch.full_like(ids, -100)
    labels[:, len(prompt):] = ids[:, len(prompt):]
    return ids, labels
ids, labels = batch(digs)
vd = [[random.randrange(10) for _ in range(NDIG)] for _ in range(40)]
vf = fe([clip(d) for d in vd], return_tensors="pt", padding="longest")
vids, vlab = batch(vd)

def validate():
    model.eval()
    with torch.no_grad():
        o = model(input_ids=vids, input_features=vf["input_features"], input_features_mask=vf["input_features_mask"], labels=vlab)
        pred = o.logits[:, len(prompt) - 1:-1].argmax(-1)
    model.train()
    return o.loss.item(), (pred == vids[:, len(prompt):]).all(-1).float().mean().item()

if mode == "frozen_tower":
    for n, p in model.named_parameters():
        if "audio_tower" in n: p.requires_grad_(False)
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
print(f"entropy without the clip: {NDIG * math.log(10) / (NDIG + 1):.4f} nats per label token")
model.train()
for s in range(1, steps + 1):
    sel = torch.randperm(N)[:B]
    out = model(input_ids=ids[sel], input_features=xf[sel], input_features_mask=xm[sel], labels=labels[sel])
    out.loss.backward()
    gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step(); opt.zero_grad()
    if s % 10 == 0:
        print(f"step {s} loss {out.loss.item():.4f} grad_norm {gn.item():.3f}", flush=True)
    if s % 50 == 0:
        print("validation loss %.4f exact match %.3f" % validate(), flush=True)
