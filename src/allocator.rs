//! Memory settings of the `tideflow` binary and the benchmarks.
//!
//! The library installs no global allocator (that is its user's choice);
//! the binary and `benches/` install mimalloc, and call
//! [`apply_memory_settings`] first thing so that benchmarks measure what
//! the binary runs. Without mimalloc as the allocator its settings only
//! touch mimalloc's unused option table.

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

/// mimalloc's option `mi_option_allow_thp` (whether it asks the kernel
/// for transparent huge pages), likewise, and its default.
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 37;
const MI_DEFAULT_ALLOW_THP: std::ffi::c_long = 1;

/// Keeps freed memory a while ([`FREED_MEMORY_KEPT_MS`]) and turns
/// transparent huge pages off for the process, each unless the environment
/// chose (`MIMALLOC_PURGE_DELAY`, `MIMALLOC_ALLOW_THP`); to be called first
/// thing in `main`, before the process starts a thread.
///
/// Huge pages: mimalloc asks for them by default, and the kernel then
/// clears (and, where free memory is fragmented, first compacts) 2 MiB at
/// each fault. In runs that score in small batches, or write files whose
/// pages fill memory, the faults stalled: fraud JSONL -> features -> MLP ->
/// Parquet in micro batches, 2M events, 2 workers, took about 2.5 s in
/// most runs and 10 to 14 s in about one of four, with 14 to 22 s of CPU in
/// the kernel; with huge pages off, 2.5-2.6 s in every run. In bulk
/// batches the stalls were smaller (0.65-0.93 s of kernel time against
/// 0.23-0.34 s) but misled the batch size tuner; features alone run about
/// as fast either way (release build, 5 alternated runs of each).
pub fn apply_memory_settings() {
    keep_freed_memory_a_while();
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        leave_huge_pages_off();
    }
}

#[allow(unsafe_code)]
fn keep_freed_memory_a_while() {
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

/// Stops mimalloc asking for huge pages for the memory it maps from now
/// on, and the kernel giving any to the process (which covers systems that
/// give them unasked, and memory other libraries allocate).
#[allow(unsafe_code)]
fn leave_huge_pages_off() {
    // SAFETY: as above.
    unsafe {
        if libmimalloc_sys::mi_option_get(MI_OPTION_ALLOW_THP) == MI_DEFAULT_ALLOW_THP {
            libmimalloc_sys::mi_option_set(MI_OPTION_ALLOW_THP, 0);
        }
    }
    // Linux only; elsewhere, or where the kernel refuses, memory works as
    // before.
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_thp_disable(true);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    fn the_settings_leave_the_process_without_huge_pages() {
        assert!(
            std::env::var_os("MIMALLOC_ALLOW_THP").is_none(),
            "MIMALLOC_ALLOW_THP is set, and the settings leave huge pages as it says: \
             run `env -u MIMALLOC_ALLOW_THP cargo test --lib allocator`"
        );
        apply_memory_settings();
        assert_eq!(nix::sys::prctl::get_thp_disable(), Ok(true));
        // SAFETY: reads mimalloc's option table.
        let allowed = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_ALLOW_THP) };
        assert_eq!(allowed, 0, "mimalloc still asks for huge pages");
    }
}
