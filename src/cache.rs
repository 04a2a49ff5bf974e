//! Cache hints: asking the CPU to fetch memory that a loop will read soon.
//!
//! With many keys, the feature stages wait on memory more than they
//! compute, since each row's state lies somewhere in hundreds of megabytes.
//! A stage therefore first runs over a chunk of rows asking for the state
//! they will touch, so that the fetches overlap, and then computes from the
//! cache. A prefetch is only a hint: it gives the program nothing, cannot
//! fault and changes no result, only when memory arrives. Reading the
//! memory instead, which needs no `unsafe`, serves the same purpose less
//! well: a read that misses holds up the instructions behind it until it
//! retires, so fewer fetches are in flight at once (features bench at 100k
//! keys, one worker: reads took 1.19 times the CPU time of prefetches,
//! best of five interleaved runs).
//!
//! This is the one module that uses `unsafe`: the prefetch instruction
//! takes a raw pointer, and every pointer here comes from a reference.

#![allow(unsafe_code)]

/// Bytes per cache line on the machines tideflow runs on.
const LINE_BYTES: usize = 64;

/// Asks for the cache line holding the start of `value`.
#[inline(always)]
pub fn prefetch<T>(value: &T) {
    prefetch_address((value as *const T).cast());
}

/// Asks for every cache line `values` spans.
#[inline(always)]
pub fn prefetch_all<T>(values: &[T]) {
    let start = values.as_ptr().cast::<u8>();
    let bytes = std::mem::size_of_val(values);
    let mut offset = 0;
    while offset < bytes {
        prefetch_address(start.wrapping_add(offset));
        offset = next_line(start as usize, offset);
    }
}

/// The offset from address `start` of the first cache line boundary
/// after `start + offset`.
#[inline(always)]
fn next_line(start: usize, offset: usize) -> usize {
    ((start + offset) / LINE_BYTES + 1) * LINE_BYTES - start
}

#[inline(always)]
fn prefetch_address(address: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` needs SSE, which every x86_64 target has. The
    // address lies inside a live value or slice (see the callers above),
    // and a prefetch neither reads into the program nor faults.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(address.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line a slice spans is asked for once, and nothing outside it,
    /// whatever the slice's alignment and length.
    #[test]
    fn every_line_of_a_slice_is_prefetched_once() {
        for start in [0, 1, 8, 63, 64, 65, 4096 + 40] {
            for bytes in 0..300 {
                let offsets: Vec<usize> =
                    std::iter::successors(Some(0), |offset| Some(next_line(start, *offset)))
                        .take_while(|offset| *offset < bytes)
                        .collect();
                let lines: Vec<usize> = offsets
                    .iter()
                    .map(|offset| (start + offset) / LINE_BYTES)
                    .collect();
                let spanned: Vec<usize> = match bytes {
                    0 => Vec::new(),
                    _ => (start / LINE_BYTES..=(start + bytes - 1) / LINE_BYTES).collect(),
                };
                assert_eq!(lines, spanned, "start {start}, {bytes} bytes");
                assert!(offsets.iter().all(|offset| *offset < bytes));
            }
        }
    }
}
