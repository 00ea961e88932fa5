"""Does Hugging Face's tiny Gemma 3n, from random weights, learn to read pictures?

The PyTorch side of the experiment in docs/data.md ("The tiny Gemma 3n does not yet learn to use
the pictures"): `recipes/models/gemma3n-tiny` built by transformers + timm, trained with AdamW
(clip 1.0) on eight fixed `shapes`-like samples as one batch. Their answers' entropy given the
question alone is 0.4886 nats per label token; a loss below it means the pictures are used.

    [BIG=1] [CORR=A] python xtask/bench/tiny_overfit.py LR STEPS {hf|ours} [MODE]

`hf` keeps transformers' initialisation, `ours` redraws it as automodel's `from_config` does
(matrices N(0, 0.02), norm scales 1). MODE:
  one            everything trains (the default)
  groups EMB_LR  the token embeddings at EMB_LR, the rest at LR
  frozen_lm      only the towers, the embedders and the head train
  frozen_tower   the vision tower stays at its random weights
  textcue        the answer's words as text tokens where the picture's soft tokens go
  embcue         a fixed random vector per (colour, shape) as the soft tokens, into the decoder
  featcue        fixed random tower features per (colour, shape), through the image embedder;
                 CORR=A adds A × a shared component (A = 2.2: cosine 0.83 across classes)
BIG=1 draws the shape large (radius 36–44 % of the side) near the centre, as the built-in
`shapes` dataset does; without it, small (20–30 %) anywhere. Needs torch, transformers and timm.
"""
import os, random, sys, types
import torch
from transformers import Gemma3nConfig, Gemma3nForConditionalGeneration

torch.manual_seed(0)
random.seed(0)
lr = float(sys.argv[1]) if len(sys.argv) > 1 else 1e-2
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 80
init = sys.argv[3] if len(sys.argv) > 3 else "hf"
root = __import__("pathlib").Path(__file__).resolve().parents[2]
cfg = Gemma3nConfig.from_pretrained(root / "recipes/models/gemma3n-tiny")
model = Gemma3nForConditionalGeneration(cfg).float()
if init == "ours":  # every matrix N(0, 0.02), norms one, like automodel's from_config
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.02)
            elif n.endswith("bias"):
                p.zero_()
            else:
                p.fill_(1.0)
model.train()

COL = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 220), "yellow": (230, 210, 40)}
def image(shape, col):
    s = 128
    if os.environ.get("BIG"):
        r = s * (0.36 + 0.08 * random.random())
        cx = s / 2 + s * 0.06 * (random.random() - 0.5); cy = s / 2 + s * 0.06 * (random.random() - 0.5)
    else:
        r = s * (0.2 + 0.1 * random.random())
        cx = r + (s - 2 * r) * random.random(); cy = r + (s - 2 * r) * random.random()
    px = torch.zeros(3, s, s)
    for y in range(s):
        for x in range(s):
            dx, dy = x + 0.5 - cx, y + 0.5 - cy
            if shape == "circle": inside = dx * dx + dy * dy <= r * r
            elif shape == "square": inside = abs(dx) <= r * 0.8 and abs(dy) <= r * 0.8
            else: inside = abs(dy) <= r and abs(dx) <= (dy + r) / 2
            noise = random.random() * 24
            c = [v - noise / 2 for v in COL[col]] if inside else [20 + noise, 20 + noise, 24 + noise]
            for k in range(3): px[k, y, x] = c[k] / 255
    return px

# token ids: arbitrary but fixed words; answers get their own ids
W = {w: 1000 + i for i, w in enumerate(["red", "green", "blue", "yellow", "circle", "square", "triangle"])}
BOS, SOT, EOT, NL, USER, MODEL, BOI, IMG, EOI = 2, 105, 106, 107, 2364, 4368, 255999, 262145, 262144
Q = {"describe": [3000, 3001, 3002, 3003, 3004, 3005, 3006], "shape": [3100, 3101, 3102, 3103, 3104, 3105]}
samples = [("describe", "green", "circle"), ("describe", "red", "circle"), ("describe", "yellow", "triangle"),
           ("shape", "red", "square"), ("describe", "blue", "circle"), ("describe", "red", "triangle"),
           ("describe", "red", "circle"), ("shape", "green", "circle")]
mode = sys.argv[4] if len(sys.argv) > 4 else "one"
rows, labs, pix, keys = [], [], [], []
for q, col, shp in samples:
    cue = [W[col], W[shp]] + [4000] * 14 if mode == "textcue" else [IMG] * 16
    prompt = [BOS, SOT, USER, NL, BOI] + cue + [EOI, NL] + Q[q] + [EOT, NL, SOT, MODEL, NL]
    ans = ([W[col], W[shp]] if q == "describe" else [W[shp]]) + [EOT]
    rows.append(prompt + ans); labs.append([-100] * len(prompt) + ans); pix.append(image(shp, col)); keys.append((col, shp))
T = max(map(len, rows))
ids = torch.tensor([r + [0] * (T - len(r)) for r in rows])
labels = torch.tensor([l + [-100] * (T - len(l)) for l in labs])
mask = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows])
pv = torch.stack(pix)
g = torch.Generator().manual_seed(123)
classes = sorted(set(keys))
common = torch.randn(16, 2048, generator=g) * float(os.environ.get("CORR", "0"))
FEAT = {k: common + torch.randn(16, 2048, generator=g) for k in classes}
EMB = {k: torch.randn(16, 64, generator=g) for k in classes}
if mode in ("featcue", "embcue"):  # replace the tower's output by fixed vectors per class
    def image_features(self, pixel_values, **kw):
        if mode == "featcue":
            out = self.embed_vision(inputs_embeds=torch.stack([FEAT[k] for k in keys]))
        else:
            out = torch.stack([EMB[k] for k in keys])
        return types.SimpleNamespace(pooler_output=out, last_hidden_state=out)
    model.model.get_image_features = types.MethodType(image_features, model.model)
if mode == "textcue":
    pv = None
if mode == "frozen_tower":
    for n, p in model.named_parameters():
        if "vision_tower" in n:
            p.requires_grad_(False)
if mode == "groups":  # embeddings fast, the rest at lr
    emb = [p for n, p in model.named_parameters() if "embed_tokens" in n]
    rest = [p for n, p in model.named_parameters() if "embed_tokens" not in n]
    opt = torch.optim.AdamW([{"params": emb, "lr": float(sys.argv[5])}, {"params": rest}], lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
elif mode == "frozen_lm":  # only towers + embedders + head train
    for n, p in model.named_parameters():
        if "language_model" in n and "embed_tokens." not in n:
            p.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
else:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
n_lab = (labels != -100).sum().item()
print(f"lr {lr} init {init}: {n_lab} label tokens; text-only entropy 0.4886")
for s in range(1, steps + 1):
    out = model(input_ids=ids, pixel_values=pv, attention_mask=mask, labels=labels)
    out.loss.backward()
    gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step(); opt.zero_grad()
    if s % 5 == 0:
        print(f"step {s} loss {out.loss.item():.4f} grad_norm {gn.item():.3f}", flush=True)
