//! Stopping a run cleanly on Ctrl-C or SIGTERM: the trainer finishes the optimizer step it is
//! in, writes a checkpoint and returns [`crate::TrainError::Interrupted`]; a second signal ends
//! the process at once.
//!
//! [`install`] sets the handlers (the CLI calls it; a program embedding the trainer may, or
//! may call [`request`] from its own handler). In a data-parallel run every worker's request
//! travels with the step's gradients, so all workers stop after the same step.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);
static SIGNALS: AtomicUsize = AtomicUsize::new(0);

/// The exit status of a run stopped by a signal (as a shell reports Ctrl-C).
pub const EXIT_STATUS: u8 = 130;

/// Ask the running trainer to stop after its current step.
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Whether a stop was asked for.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Forget a request (a program that runs several trainings in turn).
pub fn clear() {
    REQUESTED.store(false, Ordering::SeqCst);
    SIGNALS.store(0, Ordering::SeqCst);
}

extern "C" fn on_signal(_: libc::c_int) {
    // only async-signal-safe work here: atomics, write(2), _exit(2)
    if SIGNALS.fetch_add(1, Ordering::SeqCst) == 0 {
        REQUESTED.store(true, Ordering::SeqCst);
        let msg = b"\nstopping after this step and saving a checkpoint (press Ctrl-C again to quit at once)\n";
        // SAFETY: write(2) of a static buffer to stderr
        unsafe {
            libc::write(2, msg.as_ptr().cast(), msg.len());
        }
    } else {
        // SAFETY: _exit(2) ends the process without running anything else
        unsafe { libc::_exit(EXIT_STATUS as libc::c_int) }
    }
}

/// Handle SIGINT and SIGTERM: the first asks the trainer to stop after its step, the second
/// ends the process with status 130.
pub fn install() {
    automodel_distributed::on_stop_signals(on_signal);
}
