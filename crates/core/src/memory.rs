//! Keeping a long training run's resident memory bounded when the allocator keeps freed pages.
//!
//! The binaries use jemalloc with freed pages kept for reuse ([`crate::jemalloc!`]): a training
//! step's large temporaries are then recycled instead of faulted in and zeroed again every step
//! (up to 2.9× faster steps, `docs/benchmarks.md`). jemalloc does not reuse every kept page,
//! though: batches of different lengths free and ask for blocks of slightly different sizes, and
//! the pages it keeps but cannot fit grow the process by a few MB per step (measured: about
//! 10 MB per step on the tiny Gemma 3n, so a 10,000-step run would need another 100 GB).
//!
//! [`ResidentLimit`] watches the process's resident size after each step and, once it has grown
//! past the step's working set by a margin, hands the kept pages back to the kernel
//! ([`release_freed_memory`]). The next step faults in what it needs again; the cost is
//! amortised over the many steps between two releases.

use std::sync::OnceLock;

static RELEASE: OnceLock<fn() -> bool> = OnceLock::new();

/// Register how to return the allocator's kept pages to the kernel (the binary that installs
/// jemalloc does, see [`crate::jemalloc!`]). The first registration wins.
pub fn set_release_hook(release: fn() -> bool) {
    let _ = RELEASE.set(release);
}

/// Return the allocator's freed but kept pages to the kernel. `false` when no allocator hook
/// is registered (e.g. the system allocator, which returns large blocks by itself) or the
/// allocator refused.
pub fn release_freed_memory() -> bool {
    RELEASE.get().is_some_and(|release| release())
}

/// This process's resident memory in bytes (Linux `VmRSS`; `None` elsewhere).
pub fn resident_bytes() -> Option<u64> {
    status_kib("VmRSS:").map(|kib| kib * 1024)
}

/// This process's peak resident memory in bytes (Linux `VmHWM`; `None` elsewhere).
pub fn peak_resident_bytes() -> Option<u64> {
    status_kib("VmHWM:").map(|kib| kib * 1024)
}

/// Reset this process's peak resident memory to its current size (Linux `clear_refs` 5; a no-op
/// elsewhere), so that what follows is measured on its own.
pub fn reset_peak_resident() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// When to release kept pages: the first step is a warm-up (lazily created state such as the
/// optimizer's moments); the resident size after the next step (and after the first step
/// since each release) is the step's working set; once the resident size exceeds it by
/// `fraction` of it (and at least `min_bytes`), the kept pages go back to the kernel.
#[derive(Debug, Clone)]
pub struct ResidentLimit {
    /// Allowed growth over the working set, as a fraction of it.
    pub fraction: f64,
    /// Allowed growth in bytes at least (small models).
    pub min_bytes: u64,
    working_set: Option<u64>,
    warmed_up: bool,
}

impl Default for ResidentLimit {
    /// 25 % over the working set, at least 256 MiB.
    fn default() -> Self {
        Self::new(0.25, 256 << 20)
    }
}

impl ResidentLimit {
    pub fn new(fraction: f64, min_bytes: u64) -> Self {
        Self {
            fraction,
            min_bytes,
            working_set: None,
            warmed_up: false,
        }
    }

    /// Whether a step that left the process at `resident` bytes should release kept pages.
    pub fn should_release(&mut self, resident: u64) -> bool {
        if !self.warmed_up {
            self.warmed_up = true;
            return false;
        }
        let Some(base) = self.working_set else {
            self.working_set = Some(resident);
            return false;
        };
        let limit = base + ((base as f64 * self.fraction) as u64).max(self.min_bytes);
        if resident <= limit {
            return false;
        }
        // the next step's resident size is the new working set
        self.working_set = None;
        true
    }

    /// Measure the resident size and release kept pages when it is over the limit. Returns
    /// whether pages were released.
    pub fn after_step(&mut self) -> bool {
        match resident_bytes() {
            Some(rss) if self.should_release(rss) => {
                let released = release_freed_memory();
                if released {
                    tracing::debug!(
                        "resident memory {:.2} GiB over the limit: freed pages returned to the kernel (now {:.2} GiB)",
                        rss as f64 / (1u64 << 30) as f64,
                        resident_bytes().unwrap_or(0) as f64 / (1u64 << 30) as f64
                    );
                }
                released
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn releases_once_growth_passes_the_margin_then_measures_again() {
        let mut l = ResidentLimit::new(0.25, 100 * MIB);
        // the warm-up step's size does not count
        assert!(!l.should_release(10 * MIB));
        // the next step's is the working set
        assert!(!l.should_release(1000 * MIB));
        // growth within 25 % is kept
        assert!(!l.should_release(1100 * MIB));
        assert!(!l.should_release(1250 * MIB));
        assert!(l.should_release(1251 * MIB));
        // the step after a release sets the working set again
        assert!(!l.should_release(2000 * MIB));
        assert!(!l.should_release(2400 * MIB));
        assert!(l.should_release(2600 * MIB));
        // and stays armed
        assert!(!l.should_release(2000 * MIB));
        assert!(l.should_release(2600 * MIB));
    }

    #[test]
    fn small_working_sets_get_the_minimum_margin() {
        let mut l = ResidentLimit::new(0.25, 256 * MIB);
        assert!(!l.should_release(1));
        assert!(!l.should_release(100 * MIB));
        assert!(!l.should_release(356 * MIB));
        assert!(l.should_release(357 * MIB));
    }

    #[test]
    fn resident_size_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            let rss = resident_bytes().expect("VmRSS");
            let peak = peak_resident_bytes().expect("VmHWM");
            assert!(rss > 0 && peak >= rss, "rss {rss}, peak {peak}");
        }
    }

    #[test]
    fn without_a_hook_nothing_is_released() {
        // the test binary uses the system allocator and registers no hook
        assert!(!release_freed_memory());
    }
}
