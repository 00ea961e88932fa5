//! Tensor comparison with the reference tolerances.

use std::fmt;

/// How close a result must be to the reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tolerance {
    /// `|a − b| ≤ atol + rtol·|b|` for every element.
    Elementwise { atol: f64, rtol: f64 },
    /// `max|a − b| ≤ rel·max|b| + abs` over the tensor (gradients).
    RelMax { rel: f64, abs: f64 },
    /// Bit-for-bit equal values (ids, masks).
    Exact,
}

impl fmt::Display for Tolerance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tolerance::Elementwise { atol, rtol } => write!(f, "atol {atol:e} + rtol {rtol:e}"),
            Tolerance::RelMax { rel, abs } => write!(f, "{rel:e}·max|ref| + {abs:e}"),
            Tolerance::Exact => write!(f, "exact"),
        }
    }
}

/// One comparison.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub max_abs_err: f64,
    pub max_ref: f64,
    pub tolerance: Tolerance,
    pub passed: bool,
    /// Why it failed beyond the numbers (shape mismatch, missing tensor...).
    pub note: Option<String>,
    /// A failure known and not yet explained, with where it is tracked: printed `[OPEN]` with
    /// its numbers on every run, not counted as a pass or as a failure.
    pub open: Option<String>,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}] {:<58} max_err {:>9.3e}  (max|ref| {:>9.3e}; tol {})",
            match (self.passed, &self.open) {
                (true, _) => "PASS",
                (false, Some(_)) => "OPEN",
                (false, None) => "FAIL",
            },
            self.name,
            self.max_abs_err,
            self.max_ref,
            self.tolerance
        )?;
        if let Some(n) = &self.note {
            write!(f, "  — {n}")?;
        }
        if let (false, Some(o)) = (self.passed, &self.open) {
            write!(f, "  — open: {o}")?;
        }
        Ok(())
    }
}

impl Check {
    /// A failed check that could not compare numbers.
    pub fn failed(name: impl Into<String>, tolerance: Tolerance, note: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            max_abs_err: f64::NAN,
            max_ref: f64::NAN,
            tolerance,
            passed: false,
            note: Some(note.into()),
            open: None,
        }
    }

    /// Whether it failed and is not a known, tracked failure ([`Check::open`]).
    pub fn failing(&self) -> bool {
        !self.passed && self.open.is_none()
    }
}

/// Compare `got` with `want` (same shape, row-major values).
pub fn compare(
    name: impl Into<String>,
    got: &[f64],
    got_shape: &[usize],
    want: &[f64],
    want_shape: &[usize],
    tol: Tolerance,
) -> Check {
    let name = name.into();
    if got_shape != want_shape || got.len() != want.len() {
        return Check::failed(
            name,
            tol,
            format!("shape {got_shape:?}, reference {want_shape:?}"),
        );
    }
    let mut max_err = 0.0f64;
    let mut max_ref = 0.0f64;
    let mut ok = true;
    let mut nonfinite = false;
    for (&a, &b) in got.iter().zip(want) {
        let e = (a - b).abs();
        if !a.is_finite() && a != b {
            nonfinite = true;
        }
        max_err = max_err.max(if e.is_nan() { f64::INFINITY } else { e });
        max_ref = max_ref.max(b.abs());
        match tol {
            Tolerance::Elementwise { atol, rtol } => ok &= e <= atol + rtol * b.abs(),
            Tolerance::Exact => ok &= a == b,
            Tolerance::RelMax { .. } => {}
        }
    }
    if let Tolerance::RelMax { rel, abs } = tol {
        ok = max_err <= rel * max_ref + abs;
    }
    let note = nonfinite.then(|| "non-finite values".to_string());
    Check {
        name,
        max_abs_err: max_err,
        max_ref,
        tolerance: tol,
        passed: ok && !nonfinite,
        note,
        open: None,
    }
}

/// The largest absolute difference between `a` and `b`, which must be of one length (what the
/// tests that hold two runs of a model against each other compare).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerances_decide() {
        let t = Tolerance::Elementwise {
            atol: 1e-3,
            rtol: 1e-3,
        };
        assert!(compare("a", &[1.0, 2.0], &[2], &[1.0005, 2.001], &[2], t).passed);
        assert!(!compare("a", &[1.0, 2.0], &[2], &[1.01, 2.0], &[2], t).passed);
        assert!(!compare("a", &[1.0], &[1], &[1.0, 2.0], &[2], t).passed);
        assert!(!compare("a", &[f64::NAN], &[1], &[1.0], &[1], t).passed);
        let g = Tolerance::RelMax {
            rel: 1e-3,
            abs: 1e-7,
        };
        assert!(compare("g", &[0.0, 100.05], &[2], &[0.05, 100.0], &[2], g).passed);
        assert!(!compare("g", &[0.0, 1.0], &[2], &[0.05, 1.0], &[2], g).passed);
        assert!(!compare("e", &[1.0], &[1], &[1.0000001], &[1], Tolerance::Exact).passed);
    }
}
