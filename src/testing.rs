//! Helpers shared by the crate's unit tests.

/// A xorshift sequence of 64-bit numbers from `seed` (not zero): cheap,
/// deterministic inputs for tests that compare two computations over many
/// values.
pub fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}
