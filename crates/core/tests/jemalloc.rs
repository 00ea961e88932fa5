//! The binaries' allocator (`automodel_core::jemalloc!`), installed in this test binary: zeroed
//! blocks come back zeroed whatever the block held before, and recycled large blocks are
//! zeroed by writing, without faulting their pages in again.

automodel_core::jemalloc!();

use automodel_core::memory::{HUGE_PAGE_MIN_BLOCK, WRITE_ZEROS_MIN_BLOCK, zero_by_writing};
use std::hint::black_box;

/// Allocate `len` bytes filled with `0xAB` and free them, so that the next block of that size
/// is likely recycled with stale contents.
fn dirty(len: usize) {
    black_box(vec![0xABu8; len]);
}

#[test]
fn zeroed_blocks_are_zero_after_reuse() {
    jemalloc_setup();
    let sizes = [
        8,
        4096,
        WRITE_ZEROS_MIN_BLOCK - 1,
        WRITE_ZEROS_MIN_BLOCK,
        WRITE_ZEROS_MIN_BLOCK + 1,
        1 << 20,
        (1 << 20) + 12_345,
        HUGE_PAGE_MIN_BLOCK - 1,
        HUGE_PAGE_MIN_BLOCK,
        HUGE_PAGE_MIN_BLOCK + (3 << 20),
    ];
    for round in 0..3 {
        for &len in &sizes {
            dirty(len);
            let z = black_box(vec![0u8; len]);
            assert!(
                z.iter().all(|&b| b == 0),
                "a zeroed block of {len} bytes held non-zero bytes (round {round})"
            );
            // zeroed blocks of another element type and alignment
            dirty(len);
            let f = black_box(vec![0f32; len.div_ceil(4)]);
            assert!(f.iter().all(|&x| x == 0.0), "{len} bytes of f32");
        }
    }
}

#[test]
fn blocks_from_16_kib_are_zeroed_by_writing() {
    assert!(!zero_by_writing(WRITE_ZEROS_MIN_BLOCK - 1));
    assert!(zero_by_writing(WRITE_ZEROS_MIN_BLOCK));
    assert!(zero_by_writing(HUGE_PAGE_MIN_BLOCK + 1));
}

/// Minor page faults of this thread so far (the other tests run beside it).
#[cfg(target_os = "linux")]
fn minor_faults() -> i64 {
    // SAFETY: getrusage writes the struct it is given
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, &mut u), 0);
        u.ru_minflt
    }
}

#[cfg(target_os = "linux")]
#[test]
fn recycled_blocks_are_not_faulted_in_again() {
    // jemalloc's own calloc zeroes a recycled large block by returning its pages to the kernel
    // (MADV_DONTNEED), so each reuse would fault all 256 pages of this 1 MiB block in again
    const LEN: usize = 1 << 20;
    const ROUNDS: i64 = 200;
    for _ in 0..3 {
        dirty(LEN);
        black_box(vec![0u8; LEN]);
    }
    let before = minor_faults();
    for _ in 0..ROUNDS {
        let mut z = black_box(vec![0u8; LEN]);
        z.fill(1); // written in full, as a matmul writes its output
        black_box(&z);
    }
    let faults = minor_faults() - before;
    let pages = (LEN / 4096) as i64;
    assert!(
        faults < ROUNDS * pages / 10,
        "{faults} page faults for {ROUNDS} zeroed 1 MiB blocks (calloc's refaulting would be about {})",
        ROUNDS * pages
    );
}
