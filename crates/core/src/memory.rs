//! Keeping a long training run's resident memory bounded when the allocator keeps freed pages.
//!
//! The binaries use jemalloc with freed pages kept for reuse ([`crate::jemalloc!`]): a training
//! step's large temporaries are then recycled instead of faulted in and zeroed again every step
//! (up to 2.9× faster steps, `docs/benchmarks.md`). jemalloc does not reuse every kept page,
//! though: batches of different lengths free and ask for blocks of slightly different sizes, and
//! the pages it keeps but cannot fit grow the process by a few MB per step (measured: about
//! 10 MB per step on the tiny Gemma 3n, so a 10,000-step run would need another 100 GB).
//!
//! [`tune_jemalloc`] keeps that in check where it mattered most: the arenas of small and medium
//! blocks return pages left unused for 10 s, only the large blocks are kept for good.
//! [`ResidentLimit`] is the backstop: it watches the process's resident size after each step
//! and, once it has grown past the step's working set by a margin, hands the kept pages back to
//! the kernel ([`release_freed_memory`]). The next step faults in what it needs again; the
//! cost is amortised over the many steps between two releases.

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

/// jemalloc's `mallctl`, as `tikv_jemalloc_sys` declares it.
pub type Mallctl = unsafe extern "C" fn(
    *const std::ffi::c_char,
    *mut std::ffi::c_void,
    *mut usize,
    *mut std::ffi::c_void,
    usize,
) -> std::ffi::c_int;

/// How long jemalloc's ordinary arenas (the small and medium size classes) keep freed pages
/// before returning them to the kernel, in milliseconds (see [`tune_jemalloc`]).
pub const ARENA_DIRTY_DECAY_MS: isize = 10_000;

/// Split jemalloc's page keeping by block size: the arena that serves blocks over
/// `opt.oversize_threshold` (8 MiB) keeps every freed page for good, the ordinary arenas return
/// pages unused for about [`ARENA_DIRTY_DECAY_MS`] (straight to the kernel, no lazy
/// `MADV_FREE` stage). Called by the `jemalloc_setup` function of [`crate::jemalloc!`];
/// nothing is changed when `_RJEM_MALLOC_CONF` is set (the user's settings win). Returns
/// whether the settings were applied.
///
/// Why: a training step's large blocks (the embedding's gradient, logits chunks) come back
/// in the same sizes every step, so keeping them saves faulting in and zeroing hundreds of MB
/// per step. jemalloc does not merge the freed pages it keeps, though, and the medium blocks of
/// the forward and backward passes, freed in a different order each step, were cut into pieces
/// that later requests did not fit: the 270M full step grew by 300-400 MB per step while its
/// live tensors did not (docs/benchmarks.md). Returning those pages after a while bounds that
/// at a small cost (the ordinary arenas' pages are a small share of the step).
pub fn tune_jemalloc(mallctl: Mallctl) -> bool {
    if std::env::var_os("_RJEM_MALLOC_CONF").is_some() {
        return false;
    }
    let ctl = Ctl(mallctl);
    // the arena of blocks over the oversize threshold: create it with a block larger than the
    // threshold (never touched) and look up where it lies
    let threshold = ctl
        .read::<usize>("opt.oversize_threshold", None)
        .unwrap_or(0);
    let huge = (threshold > 0 && threshold < PROBE_BYTES)
        .then(|| {
            let probe: Vec<u8> = Vec::with_capacity(PROBE_BYTES);
            ctl.read::<u32>("arenas.lookup", Some(probe.as_ptr().cast()))
        })
        .flatten();
    let Some(narenas) = ctl.read::<u32>("arenas.narenas", None) else {
        return false;
    };
    if let Some(h) = huge {
        ctl.write(&format!("arena.{h}.dirty_decay_ms"), -1);
        ctl.write(&format!("arena.{h}.muzzy_decay_ms"), -1);
    }
    // arenas created from now on, then those that exist (the others answer an error)
    let mut ok = ctl.write("arenas.dirty_decay_ms", ARENA_DIRTY_DECAY_MS)
        && ctl.write("arenas.muzzy_decay_ms", 0);
    for i in (0..narenas).filter(|&i| Some(i) != huge) {
        if ctl.write(&format!("arena.{i}.dirty_decay_ms"), ARENA_DIRTY_DECAY_MS) {
            ok &= ctl.write(&format!("arena.{i}.muzzy_decay_ms"), 0);
        }
    }
    ok
}

/// The block [`tune_jemalloc`] allocates to find the arena of oversize blocks.
const PROBE_BYTES: usize = 16 << 20;

/// `mallctl` with typed reads and `ssize_t` writes.
struct Ctl(Mallctl);

impl Ctl {
    /// Read setting `name` of type `T` (`unsigned` or `size_t`), passing `ptr` as the new value
    /// where the setting takes one (`arenas.lookup`).
    fn read<T: Copy + Default>(
        &self,
        name: &str,
        ptr: Option<*const std::ffi::c_void>,
    ) -> Option<T> {
        let name = format!("{name}\0");
        let mut out = T::default();
        let mut len = std::mem::size_of::<T>();
        let mut ptr = ptr;
        let (newp, newlen) = match &mut ptr {
            Some(p) => ((&raw mut *p).cast(), std::mem::size_of_val(p)),
            None => (std::ptr::null_mut(), 0),
        };
        // SAFETY: a NUL-terminated name, an output of the setting's type and size, and a
        // pointer-sized new value only for settings that take a pointer.
        let rc = unsafe {
            (self.0)(
                name.as_ptr().cast(),
                (&raw mut out).cast(),
                &raw mut len,
                newp,
                newlen,
            )
        };
        (rc == 0 && len == std::mem::size_of::<T>()).then_some(out)
    }

    /// Set the `ssize_t` setting `name`; whether jemalloc accepted it.
    fn write(&self, name: &str, mut value: isize) -> bool {
        let name = format!("{name}\0");
        // SAFETY: a NUL-terminated name and a value of the setting's type (ssize_t).
        unsafe {
            (self.0)(
                name.as_ptr().cast(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                (&raw mut value).cast(),
                std::mem::size_of::<isize>(),
            ) == 0
        }
    }
}

/// Zeroed blocks ([`std::alloc::GlobalAlloc::alloc_zeroed`], e.g. `vec![0.0; n]`, Burn's
/// `zeros` and the CPU backend's matmul outputs) of at least this size are taken from the
/// allocator as ordinary blocks and zeroed by writing (see [`zero_by_writing`]).
pub const WRITE_ZEROS_MIN_BLOCK: usize = 16 << 10;

/// Whether the allocator of [`crate::jemalloc!`] zeroes a zeroed block of `len` bytes itself
/// (`malloc` and a write of zeros) instead of asking jemalloc (`calloc`): blocks of
/// [`WRITE_ZEROS_MIN_BLOCK`] and more.
///
/// Why: jemalloc zeroes a recycled large block (16 KiB and up) by handing its pages back to
/// the kernel (`madvise(MADV_DONTNEED)`; only under its own `thp:always` does it write zeros),
/// so the block's next use faults every page in again and the kernel clears it. The 270M LoRA
/// step took 300,000 page faults per step that way. Writing zeros into the pages the allocator
/// already holds cut that to about 54,000 (with burn-flex's aligned buffers,
/// third_party/README.md), halved the kernel's share of the step's time and made the step
/// 3-9 % faster, at the same peak memory (docs/benchmarks.md). A block that was never used
/// before is written once where the kernel would have cleared it on first touch anyway.
#[inline]
pub fn zero_by_writing(len: usize) -> bool {
    len >= WRITE_ZEROS_MIN_BLOCK
}

/// Blocks at least this large are backed by transparent huge pages ([`advise_huge_pages`]).
pub const HUGE_PAGE_MIN_BLOCK: usize = 32 << 20;

/// Ask the kernel to back the 2 MiB-aligned part of a freshly allocated block of `len` bytes
/// at `ptr` with transparent huge pages (Linux `madvise(MADV_HUGEPAGE)`); blocks under
/// [`HUGE_PAGE_MIN_BLOCK`], null pointers and other systems are left alone. The allocator of
/// [`crate::jemalloc!`] calls it for every allocation.
///
/// Why only large blocks: a training step's big tensors (the 262k-row embedding's gradient,
/// logits chunks, optimizer temporaries) are swept end to end by GEMMs and element-wise passes,
/// where 2 MiB pages save TLB misses and page faults. Huge pages under the small and medium
/// size classes, by contrast, make every 2 MiB region the allocator ever touched resident in
/// full: with jemalloc's `thp:always` the 270M full step held about 350 MB more
/// (docs/benchmarks.md). The advice changes no contents; a range that is not mapped is refused
/// by the kernel and ignored here.
#[inline]
pub fn advise_huge_pages(ptr: *mut u8, len: usize) {
    if len < HUGE_PAGE_MIN_BLOCK || ptr.is_null() {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = (ptr as usize).next_multiple_of(HUGE);
        let end = (ptr as usize + len) & !(HUGE - 1);
        if end > start {
            // SAFETY: MADV_HUGEPAGE only changes how the kernel backs the range, never its
            // contents; the range lies within the block the allocator just returned.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
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

    /// A stand-in for jemalloc's `mallctl`: four arenas of which 0 and 2 exist, the oversize
    /// arena is 3; records every write.
    unsafe extern "C" fn fake_mallctl(
        name: *const std::ffi::c_char,
        oldp: *mut std::ffi::c_void,
        oldlenp: *mut usize,
        newp: *mut std::ffi::c_void,
        newlen: usize,
    ) -> std::ffi::c_int {
        // SAFETY: called by `tune_jemalloc` with the arguments `mallctl` takes
        unsafe {
            let name = std::ffi::CStr::from_ptr(name).to_str().unwrap().to_string();
            let answer = |v: u64| {
                match *oldlenp {
                    4 => *oldp.cast::<u32>() = v as u32,
                    8 => *oldp.cast::<u64>() = v,
                    n => panic!("{name}: output of {n} bytes"),
                }
                0
            };
            match name.as_str() {
                "opt.oversize_threshold" => answer(8 << 20),
                "arenas.narenas" => answer(4),
                "arenas.lookup" => {
                    assert_eq!(newlen, std::mem::size_of::<*const u8>());
                    assert!(!(*newp.cast::<*const u8>()).is_null());
                    answer(3)
                }
                _ => {
                    assert_eq!(newlen, std::mem::size_of::<isize>(), "{name}");
                    let exists = !name.starts_with("arena.1.");
                    WRITES.lock().unwrap().push((name, *newp.cast::<isize>()));
                    if exists { 0 } else { 14 }
                }
            }
        }
    }

    static WRITES: std::sync::Mutex<Vec<(String, isize)>> = std::sync::Mutex::new(Vec::new());

    #[test]
    fn oversize_blocks_keep_their_pages_and_the_other_arenas_decay() {
        if std::env::var_os("_RJEM_MALLOC_CONF").is_some() {
            assert!(!tune_jemalloc(fake_mallctl));
            return;
        }
        assert!(tune_jemalloc(fake_mallctl));
        let writes = WRITES.lock().unwrap().clone();
        let d = ARENA_DIRTY_DECAY_MS;
        let want: Vec<(String, isize)> = [
            ("arena.3.dirty_decay_ms", -1),
            ("arena.3.muzzy_decay_ms", -1),
            ("arenas.dirty_decay_ms", d),
            ("arenas.muzzy_decay_ms", 0),
            ("arena.0.dirty_decay_ms", d),
            ("arena.0.muzzy_decay_ms", 0),
            // arena 1 does not exist yet: refused, and its muzzy setting is not tried
            ("arena.1.dirty_decay_ms", d),
            ("arena.2.dirty_decay_ms", d),
            ("arena.2.muzzy_decay_ms", 0),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_string(), v))
        .collect();
        assert_eq!(writes, want);
    }

    #[test]
    fn large_blocks_are_advised_huge_pages_and_small_ones_are_not() {
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled");
        if !cfg!(target_os = "linux") || thp.map_or(true, |t| t.contains("[never]")) {
            return;
        }
        // the VmFlags of the mapping that holds `addr`
        let flags = |addr: usize| -> String {
            let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
            let mut inside = false;
            for line in smaps.lines() {
                if let Some((range, _)) = line.split_once(' ')
                    && let Some((lo, hi)) = range.split_once('-')
                    && let (Ok(lo), Ok(hi)) =
                        (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                {
                    inside = (lo..hi).contains(&addr);
                } else if inside && let Some(f) = line.strip_prefix("VmFlags:") {
                    return f.to_string();
                }
            }
            panic!("no mapping holds {addr:#x}");
        };
        let mut big = vec![1u8; HUGE_PAGE_MIN_BLOCK + (4 << 20)];
        let start = (big.as_ptr() as usize).next_multiple_of(2 << 20);
        assert!(!flags(start).contains(" hg"), "{}", flags(start));
        advise_huge_pages(big.as_mut_ptr(), big.len());
        assert!(flags(start).contains(" hg"), "{}", flags(start));
        // the contents are untouched
        assert!(big.iter().all(|&b| b == 1));

        let mut small = vec![1u8; 8 << 20];
        let at = small.as_ptr() as usize + (4 << 20);
        let before = flags(at);
        advise_huge_pages(small.as_mut_ptr(), small.len());
        assert_eq!(flags(at), before);
    }

    #[test]
    fn without_a_hook_nothing_is_released() {
        // the test binary uses the system allocator and registers no hook
        assert!(!release_freed_memory());
    }
}
