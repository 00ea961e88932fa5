"""Write the quantizer test vectors: inputs, and the blocks ggml's own reference quantizers make
of them (ggml_quantize_chunk in libggml-base, as built by llama-cpp-python; no importance
matrix, so quantize_row_*_ref runs, as in llama-quantize). Q8_0 and Q5_0 are also checked
against the `gguf` package's numpy quantizers when it is installed.

    pip install llama-cpp-python==0.3.36 numpy   # builds llama.cpp from source
    python crates/gguf/tests/vectors/make.py

Files: <type>.in (little-endian f32), <type>.out (the blocks)."""
import ctypes
import glob
import os
import sys

import numpy as np
import llama_cpp

HERE = os.path.dirname(os.path.abspath(__file__))
LIB = glob.glob(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so*"))[0]
ggml = ctypes.CDLL(LIB)
ggml.ggml_quantize_chunk.restype = ctypes.c_size_t
ggml.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                     ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
ggml.ggml_row_size.restype = ctypes.c_size_t
ggml.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]

TYPES = {"q8_0": 8, "q5_0": 6, "q4_k": 12, "q6_k": 14}
N = 256  # values per row


def rows(seed: int) -> np.ndarray:
    """Rows of 256 values that visit the quantizers' branches: Gaussian weights at several
    scales, heavy tails, one outlier, constant, zero, tiny, one-signed, and sub-blocks of very
    different sizes."""
    rng = np.random.default_rng(seed)
    out = []
    for s in [1e-3, 0.02, 1.0, 40.0]:
        out += [rng.normal(0, s, N) for _ in range(6)]
    out += [rng.standard_t(2, N) for _ in range(6)]
    out += [rng.uniform(-1, 1, N) for _ in range(4)]
    r = rng.normal(0, 0.02, N); r[17] = 3.0; out.append(r)
    r = rng.normal(0, 0.02, N); r[200] = -3.0; out.append(r)
    out += [np.zeros(N), np.full(N, 0.5), np.full(N, -0.25), np.full(N, 1e-30)]
    out += [np.abs(rng.normal(0, 1, N)), -np.abs(rng.normal(0, 1, N))]
    r = rng.normal(0, 1, N) * np.repeat(10.0 ** rng.uniform(-4, 1, 16), 16); out.append(r)
    r = rng.normal(0, 1, N); r[::32] = 0; r[:32] = 0; out.append(r)
    # values on rounding boundaries of a Q8_0 grid
    out.append(np.tile(np.arange(-16, 16) * 0.5 + 0.25, N // 32))
    return np.stack(out).astype(np.float32)


def main() -> None:
    x = rows(34)
    for name, t in TYPES.items():
        nrows = x.shape[0]
        size = ggml.ggml_row_size(t, N) * nrows
        dst = ctypes.create_string_buffer(size)
        src = np.ascontiguousarray(x)
        got = ggml.ggml_quantize_chunk(t, src.ctypes.data, dst, 0, nrows, N, None)
        assert got == size, (name, got, size)
        blocks = dst.raw
        try:
            import gguf.quants
            qt = gguf.GGMLQuantizationType[name.upper()]
            if name in ("q8_0", "q5_0"):
                ref = gguf.quants.quantize(src, qt).tobytes()
                assert ref == blocks, f"gguf's numpy {name} differs from ggml's"
                print(f"{name}: gguf's numpy quantizer agrees")
        except ImportError:
            pass
        src.tofile(os.path.join(HERE, f"{name}.in"))
        with open(os.path.join(HERE, f"{name}.out"), "wb") as f:
            f.write(blocks)
        print(f"{name}: {nrows} rows of {N} -> {len(blocks)} bytes")


if __name__ == "__main__":
    sys.exit(main())
