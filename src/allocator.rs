//! Settings of the allocator the `tideflow` binary and the benchmarks use.
//!
//! The library installs no global allocator (that is its user's choice);
//! the binary and `benches/` install mimalloc, and call
//! [`keep_freed_memory_a_while`] first thing so that benchmarks measure
//! what the binary runs. Without mimalloc as the allocator the setting
//! only touches mimalloc's unused option table.

/// How long mimalloc keeps memory freed before giving it back to the
/// system. At its default (10 ms) the memory of each batch went back
/// between one batch and the next, and came back as fresh pages the
/// kernel first had to clear: 44,000 to 73,000 page faults in a 2M-event
/// fraud run (2 workers, model and Parquet) against about 5,900 at 1 s,
/// with the same peak memory. `MIMALLOC_PURGE_DELAY` set in the
/// environment wins.
const FREED_MEMORY_KEPT_MS: std::ffi::c_long = 1000;

/// mimalloc's option `mi_option_purge_delay` (its place in `mi_option_e`
/// of mimalloc.h; the Rust bindings name no constant for it), and its
/// default there: an option at that place with another value is not the
/// one meant, and is left alone.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
const MI_DEFAULT_PURGE_DELAY_MS: std::ffi::c_long = 10;

/// Sets [`FREED_MEMORY_KEPT_MS`] unless the environment chose; to be
/// called first thing in `main`, before the process starts a thread.
#[allow(unsafe_code)]
pub fn keep_freed_memory_a_while() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: both functions take an option index (checked against the
    // table's bounds by mimalloc) and a number, and touch only mimalloc's
    // option table, which no other thread uses yet.
    unsafe {
        if libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) == MI_DEFAULT_PURGE_DELAY_MS {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, FREED_MEMORY_KEPT_MS);
        }
    }
}
