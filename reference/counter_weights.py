#!/usr/bin/env python3
"""Counter-formula weights (`counter-v1`), bit for bit what automodel-core's
`weights::counter` computes (crates/core/src/weights/counter.rs documents the formula).

Every element is a hash of (tensor name, seed, element index), so a released-size model can be
built on both sides without committing or downloading its weights. Run as a script, it prints
the values the Rust unit test `known_values_match_numpy` pins.
"""

from __future__ import annotations

import math

import numpy as np

FORMULA = "counter-v1"
_M64 = (1 << 64) - 1
_CHUNK = 1 << 24


def _splitmix64(z: np.ndarray) -> np.ndarray:
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _fnv1a64(name: str) -> int:
    h = 0xCBF29CE484222325
    for b in name.encode("utf-8"):
        h = ((h ^ b) * 0x100000001B3) & _M64
    return h


def counter_rule(name: str, shape) -> tuple[np.float32, np.float32]:
    """(center, scale): the tensor's values are uniform in center ± scale."""
    ends = name.endswith
    if len(shape) <= 1:
        if ends(".bias"):
            c, s = 0.0, 0.2
        elif ends("altup.correct_output_scale") or ends("per_dim_scale"):
            c, s = 0.0, 0.9
        elif ends("layer_scale.gamma"):
            c, s = 0.5, 0.3
        elif ends("self_attn.q_norm.weight") or ends("self_attn.k_norm.weight"):
            c, s = 0.5, 0.13
        else:
            c, s = 1.0, 0.25
        return np.float32(c), np.float32(s)
    fan_in = int(np.prod(shape[1:]))
    if ends("language_model.embed_tokens.weight"):
        s = math.sqrt(48.0 / fan_in)  # tied with the LM head: logits of standard deviation 4
    elif ends("embed_tokens_per_layer.weight"):
        s = 0.43
    elif ends("embedding.weight"):
        s = 1.7
    elif ends("altup.modality_router.weight"):
        s = math.sqrt(3.0 * fan_in)
    elif ends("altup.prediction_coefs.weight") or ends("altup.correction_coefs.weight"):
        s = 0.17
    else:
        s = math.sqrt(3.0 / max(fan_in, 1))
    return np.float32(0.0), np.float32(s)


def counter_values(name: str, shape, seed: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    """float32 array of `shape` (or the flat elements [start, stop) of it)."""
    n = int(np.prod(shape)) if len(shape) else 1
    stop = n if stop is None else stop
    c, s = counter_rule(name, shape)
    key = np.array([(_fnv1a64(name) ^ seed) & _M64], dtype=np.uint64)
    key = _splitmix64(key)[0]
    out = np.empty(stop - start, dtype=np.float32)
    with np.errstate(over="ignore"):
        for a in range(start, stop, _CHUNK):
            idx = np.arange(a, min(stop, a + _CHUNK), dtype=np.uint64)
            bits = _splitmix64(idx + key)
            u = (bits >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24)
            out[a - start : a - start + len(idx)] = c + s * (np.float32(2.0) * u - np.float32(1.0))
    return out.reshape(shape) if (start, stop) == (0, n) else out


def fill_model_(model, seed: int) -> int:
    """Every parameter of a torch module from the formula (by its state-dict name), in slices
    (a bf16 model never holds a float32 copy of its largest table); returns the number of
    parameters filled."""
    import torch

    done = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.data.view(-1)
            n = flat.numel()
            for a in range(0, n, _CHUNK):
                b = min(n, a + _CHUNK)
                v = torch.from_numpy(counter_values(name, tuple(p.shape), seed, a, b).reshape(-1))
                flat[a:b].copy_(v.to(p.dtype))
            done += 1
    return done


if __name__ == "__main__":
    v = counter_values("model.language_model.norm.weight", (4,), 1234)
    print("bits", [int(x) for x in v.view(np.uint32)])
    print("values", v.tolist())
