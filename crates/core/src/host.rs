//! The CPU backend's vector units and the float32 maths of its fused passes (the LM head's
//! loss, tanh-GELU, AdamW; see [`crate::Backend`]).
//!
//! One binary runs on every x86-64 CPU: the passes are compiled three times, for baseline
//! x86-64 (SSE2), for AVX2 + FMA and for AVX-512, and [`vectorized`] picks one at run time from
//! what the CPU reports ([`Simd::detect`]), as `gemm` does for the matmuls
//! ([`matmul_kernel`]). Rust never contracts `a·b + c` into a fused multiply-add, so every
//! version gives the same floats (tested). `exp` and `tanh` are branch-free polynomials the
//! compiler vectorises, where libm's `expf` and `tanhf` are scalar calls per element.

/// The vector instructions a kernel runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Simd {
    /// No vector extension beyond the target's baseline (SSE2 on x86-64).
    Baseline,
    /// AArch64's NEON (the baseline of every 64-bit ARM CPU).
    Neon,
    /// AVX2 with FMA: 256-bit (x86-64-v3).
    Avx2,
    /// AVX-512 (F): 512-bit (x86-64-v4).
    Avx512,
}

impl Simd {
    /// The widest this CPU offers, as the fused passes use it.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Self::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Self::Avx2;
            }
        }
        #[cfg(target_arch = "aarch64")]
        return Self::Neon;
        #[allow(unreachable_code)]
        Self::Baseline
    }

    /// Its short name, as logs and `cargo xtask bench` print it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::Neon => "neon",
            Self::Avx2 => "avx2+fma",
            Self::Avx512 => "avx512f",
        }
    }
}

impl std::fmt::Display for Simd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The float32 matmul kernel `gemm` (burn-flex's matmul) runs on this CPU: its AVX-512 kernels
/// (compiled in by the workspace's `x86-v4` feature) where the CPU has AVX-512F, its FMA ones
/// where it has FMA, NEON on ARM. The same tests `gemm` makes when it picks one; a test checks
/// this against the function `gemm` actually calls.
pub fn matmul_kernel() -> Simd {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Simd::Avx512;
        }
        if std::arch::is_x86_feature_detected!("fma") {
            return Simd::Avx2;
        }
    }
    #[cfg(target_arch = "aarch64")]
    if std::arch::is_aarch64_feature_detected!("neon") {
        return Simd::Neon;
    }
    Simd::Baseline
}

/// Runs `f` compiled for the widest vector unit this CPU has ([`Simd::detect`]). `f`'s loops
/// (and everything it calls that is inlined) are vectorised for that unit; results are the
/// same floats on every unit. The detection is a few cached atomic loads: call it per chunk.
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    vectorized_with(Simd::detect(), f)
}

/// [`vectorized`] for a chosen unit (one this CPU has; a wider one falls back to the baseline).
#[inline(always)]
pub fn vectorized_with<R>(simd: Simd, f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx2,fma")]
        fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        match simd {
            // SAFETY: the CPU reports the features these functions are compiled for.
            Simd::Avx512 if std::arch::is_x86_feature_detected!("avx512f") => {
                return unsafe { avx512(f) };
            }
            Simd::Avx2
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma") =>
            {
                return unsafe { avx2(f) };
            }
            _ => {}
        }
    }
    let _ = simd;
    f()
}

/// The lanes of [`fold_lanes`]: one AVX-512 register of float32.
const LANES: usize = 16;

/// `xs` folded by `op` (associative and commutative: `+`, `max`) in [`LANES`] interleaved
/// accumulators combined pairwise at the end, the order a vector unit can follow; a single
/// running float32 accumulator would pin the loop to one element at a time.
#[inline(always)]
pub fn fold_lanes(xs: &[f32], init: f32, op: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; LANES];
    let (chunks, rest) = xs.as_chunks::<LANES>();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = op(*a, x);
        }
    }
    for (a, &x) in acc.iter_mut().zip(rest) {
        *a = op(*a, x);
    }
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            acc[i] = op(acc[i], acc[i + width]);
        }
    }
    acc[0]
}

/// `e^x` for `x ≤ 88.7` to about 1 ulp (Cephes' `expf`: `x = n·ln 2 + r`, a degree-6
/// polynomial in `r`, `2^n` from the exponent bits); values below −87.3 give ≈ 1e-38.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.336_54, 88.722_83);
    // round to nearest without `round()` (a libm call on baseline x86-64)
    const SHIFTER: f32 = 12_582_912.0; // 1.5 · 2^23
    let n = (x * std::f32::consts::LOG2_E + SHIFTER) - SHIFTER;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// `tanh(x)` to a few ulp (Cephes' `tanhf`): an odd polynomial below |x| = 0.625, where
/// `1 − 2 / (e^{2|x|} + 1)` would lose the leading digits, and that expression above it; both
/// are computed and one selected, so a loop over it stays branch-free.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let a = x.abs();
    let z = x * x;
    let mut p = -5.704_988_7e-3f32;
    p = p * z + 2.063_909e-2;
    p = p * z - 5.373_971_6e-2;
    p = p * z + 1.333_144_2e-1;
    p = p * z - 3.333_328e-1;
    let small = p * z * a + a;
    let large = 1.0 - 2.0 / (exp(2.0 * a) + 1.0);
    (if a < 0.625 { small } else { large }).copysign(x)
}

#[cfg(test)]
mod tests {
    use super::{Simd, exp, fold_lanes, tanh, vectorized_with};

    /// The function `gemm` runs float32 matmuls with on this machine, by its symbol's full
    /// path (`gemm_f32::gemm::f32::<kernel>::gemm_basic`), read from this test binary's ELF
    /// symbol table. The symbol table holds every function's mangled path under every debug
    /// setting, where debug info (which a backtrace prefers) may name only `gemm_basic`.
    #[cfg(target_os = "linux")]
    fn gemm_kernel_symbol() -> String {
        use object::{Object, ObjectSymbol};
        let exe = std::env::current_exe().expect("the test binary's path");
        let bytes = std::fs::read(&exe).expect("reading the test binary");
        let file = object::File::parse(&*bytes).expect("the test binary is an ELF file");
        let symbols: Vec<(u64, u64, String)> = file
            .symbols()
            .filter(|s| s.size() > 0)
            .filter_map(|s| {
                let name = rustc_demangle::demangle(s.name().ok()?).to_string();
                Some((s.address(), s.size(), name))
            })
            .collect();
        assert!(
            !symbols.is_empty(),
            "{} has no symbol table (built with `strip`?): this test names gemm's kernel by it",
            exe.display()
        );
        // where the binary was loaded: this function's address against its symbol's
        let anchor = gemm_kernel_symbol as fn() -> String as usize as u64;
        let own = symbols
            .iter()
            .find(|(_, _, n)| n.contains("host::tests::gemm_kernel_symbol"))
            .expect("this function in the symbol table");
        let bias = anchor.wrapping_sub(own.0);
        let f = gemm_f32::gemm::f32::get_gemm_fn() as usize as u64;
        let at = f.wrapping_sub(bias);
        let found = symbols
            .iter()
            .find(|(a, size, _)| (*a..a + size).contains(&at))
            .unwrap_or_else(|| panic!("no symbol holds gemm's function at {at:#x}"));
        // the name without its hash (`::h0123…`)
        let name = &found.2;
        match name.rfind("::h") {
            Some(i) if name[i + 3..].chars().all(|c| c.is_ascii_hexdigit()) => name[..i].into(),
            _ => name.clone(),
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn gemm_runs_the_widest_kernel_this_cpu_has() {
        let symbol = gemm_kernel_symbol();
        let kernel = match super::matmul_kernel() {
            Simd::Avx512 => "avx512f",
            Simd::Avx2 => "fma",
            Simd::Neon => "neon",
            Simd::Baseline => "scalar",
        };
        assert!(
            symbol.contains(&format!("::{kernel}::gemm_basic")),
            "gemm picked `{symbol}`, expected its {kernel} kernel (CPU: {})",
            Simd::detect()
        );
        // the kernel follows the CPU, not the build: AVX-512 exactly where the CPU reports it
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            symbol.contains("::avx512f::"),
            std::arch::is_x86_feature_detected!("avx512f"),
            "{symbol}"
        );
        eprintln!(
            "gemm float32 kernel: {symbol}; fused passes: {}",
            Simd::detect()
        );
    }

    /// Every unit this CPU has, the baseline first.
    fn units() -> Vec<Simd> {
        [Simd::Baseline, Simd::Neon, Simd::Avx2, Simd::Avx512]
            .into_iter()
            .filter(|&s| s <= Simd::detect())
            .collect()
    }

    #[test]
    fn every_vector_unit_gives_the_same_floats() {
        let xs: Vec<f32> = (0..10_007)
            .map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * 60.0)
            .collect();
        let pass = |simd| {
            vectorized_with(simd, || {
                let ys: Vec<f32> = xs.iter().map(|&x| exp(x) * tanh(x * 0.1) + x * x).collect();
                let sum = fold_lanes(&ys, 0.0, |a, b| a + b);
                let max = fold_lanes(&ys, f32::NEG_INFINITY, f32::max);
                (ys, sum, max)
            })
        };
        let units = units();
        assert!(units.contains(&Simd::detect()), "{units:?}");
        let want = pass(Simd::Baseline);
        for simd in units {
            let got = pass(simd);
            assert_eq!(got.1.to_bits(), want.1.to_bits(), "{simd}: sum");
            assert_eq!(got.2.to_bits(), want.2.to_bits(), "{simd}: max");
            assert!(
                got.0
                    .iter()
                    .zip(&want.0)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{simd}: values"
            );
        }
    }

    #[test]
    fn fold_lanes_sums_and_maxes_every_element() {
        for n in [0, 1, 15, 16, 17, 1000, 1024] {
            let xs: Vec<f32> = (0..n).map(|i| (i % 7) as f32 - 2.0).collect();
            let sum: f32 = xs.iter().sum();
            assert_eq!(fold_lanes(&xs, 0.0, |a, b| a + b), sum, "n = {n}");
            let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(fold_lanes(&xs, f32::NEG_INFINITY, f32::max), max, "n = {n}");
        }
    }

    #[test]
    fn exp_is_within_two_ulps_of_libm() {
        let mut worst = 0f32;
        for i in 0..200_000 {
            let x = -87.0 + 175.0 * (i as f32 / 200_000.0);
            let (a, b) = (super::exp(x), x.exp());
            worst = worst.max((a - b).abs() / b);
        }
        assert!(worst < 2.5e-7, "relative error {worst:e}");
        assert_eq!(super::exp(0.0), 1.0);
        assert!(super::exp(-200.0) < 1e-37);
    }

    #[test]
    fn tanh_is_within_a_few_ulps_of_float64() {
        let mut worst = 0f64;
        for i in 0..400_001 {
            let x = -20.0 + 40.0 * (i as f32 / 400_000.0);
            let want = (x as f64).tanh();
            let got = super::tanh(x) as f64;
            // relative where tanh is small, absolute (to its scale, 1) elsewhere
            worst = worst.max((got - want).abs() / want.abs().clamp(1e-30, 1.0));
        }
        assert!(worst < 4e-7, "relative error {worst:e}");
        for x in [1e-30f32, 1e-7, -1e-7, 0.3, -0.624, 0.626] {
            let (got, want) = (super::tanh(x) as f64, (x as f64).tanh());
            assert!(
                (got - want).abs() <= 3e-7 * want.abs(),
                "{x}: {got} vs {want}"
            );
        }
        assert_eq!(super::tanh(0.0), 0.0);
        assert!(super::tanh(-0.0).is_sign_negative());
        assert_eq!(super::tanh(100.0), 1.0);
        assert_eq!(super::tanh(-100.0), -1.0);
    }
}
