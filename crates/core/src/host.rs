//! The float32 `exp` and `tanh` of the CPU backend's fused passes (the LM head's loss,
//! tanh-GELU; see [`crate::Backend`]): branch-free polynomials the compiler vectorises, where
//! libm's `expf` and `tanhf` are scalar calls per element.

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
