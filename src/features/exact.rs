//! Exact sums of floats, so that a window's sum, mean and std are
//! functions of the records in the window alone.
//!
//! A sliding window adds each record once and removes it once. Kept in a
//! float, the running sum carries the rounding of every record that ever
//! passed through it: the same window gives `5.01` after one history and
//! `5.0100000000000025` after another, and which history a worker saw
//! depends on batch boundaries, eviction and restarts. Here every float is
//! added to a fixed-point integer wide enough to hold it without rounding
//! (every finite `f64` is an integer multiple of 2^-1074), so adding and
//! removing are exact and the sum is the true sum of the window's values;
//! [`ExactSum::value`] rounds it once, correctly (to nearest, ties to
//! even). Sums of squares are exact the same way (a double's square is a
//! 106-bit integer times a power of two), so [`variance`] computes
//! `n·Σx² − (Σx)²` without cancellation: amounts around 1e9 that differ by
//! cents keep their spread.
//!
//! Most data needs few bits: the accumulator keeps 256 bits inline, with
//! its lowest bit worth 2^-128 (values from about 1e-22 upwards with all
//! their digits, up to 2^125 in all). A value or total outside that range,
//! or a NaN or infinity, moves the accumulator to a growable form on the
//! heap until the window empties. The form never changes a result.

use serde::{Deserialize, Serialize};

/// Limbs of the inline accumulator.
const NARROW_LIMBS: usize = 4;
/// Exponent of the inline accumulator's lowest bit (a multiple of 64, as
/// every accumulator's is, so that aligning two is a shift by limbs).
const NARROW_LOW: i32 = -128;
/// A top limb within ±2^61 leaves room to add any term below 2^254 to a
/// 256-bit two's-complement integer without overflow.
const HEADROOM: i64 = 1 << 61;

/// An exact sum of floats: a two's-complement integer (least significant
/// limb first) times a power of two, inline while it fits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExactSum {
    /// The sum times 2^128, while `wide` is `None`.
    narrow: [u64; NARROW_LIMBS],
    wide: Option<Box<WideSum>>,
}

/// The growable form of an [`ExactSum`], with the NaNs and infinities
/// added (a float cannot hold them, but a sum over them is defined).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct WideSum {
    /// The finite part, two's complement, times 2^`low`.
    limbs: Vec<u64>,
    low: i32,
    nans: u64,
    positive_infinities: u64,
    negative_infinities: u64,
}

/// A float as an exact term: `±magnitude · 2^exponent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Term {
    Zero,
    Finite {
        negative: bool,
        magnitude: u128,
        exponent: i32,
    },
    Nan,
    Infinity {
        negative: bool,
    },
}

impl Term {
    /// The exact value of `number` (for a square, of `number²`).
    #[inline]
    fn of(number: f64, squared: bool) -> Term {
        if number.is_nan() {
            return Term::Nan;
        }
        if number.is_infinite() {
            return Term::Infinity {
                negative: number < 0.0 && !squared,
            };
        }
        let bits = number.to_bits();
        let biased = ((bits >> 52) & 0x7ff) as i32;
        let fraction = bits & ((1 << 52) - 1);
        let (mantissa, exponent) = if biased == 0 {
            (fraction, -1074)
        } else {
            (fraction | (1 << 52), biased - 1075)
        };
        if mantissa == 0 {
            return Term::Zero;
        }
        // Trailing zeros dropped, a term needs fewer bits, and more values
        // fit the inline accumulator.
        let zeros = mantissa.trailing_zeros();
        let (mantissa, exponent) = (mantissa >> zeros, exponent + zeros as i32);
        let negative = (bits >> 63) == 1 && !squared;
        let (magnitude, exponent) = if squared {
            (u128::from(mantissa) * u128::from(mantissa), exponent * 2)
        } else {
            (u128::from(mantissa), exponent)
        };
        Term::Finite {
            negative,
            magnitude,
            exponent,
        }
    }
}

impl ExactSum {
    /// Adds `number`.
    #[inline]
    pub fn add(&mut self, number: f64) {
        self.apply(Term::of(number, false), false);
    }

    /// Removes `number`, added before.
    #[inline]
    pub fn remove(&mut self, number: f64) {
        self.apply(Term::of(number, false), true);
    }

    /// Adds `number²`, exactly.
    #[inline]
    pub fn add_square(&mut self, number: f64) {
        self.apply(Term::of(number, true), false);
    }

    /// Removes `number²`, added before.
    #[inline]
    pub fn remove_square(&mut self, number: f64) {
        self.apply(Term::of(number, true), true);
    }

    /// Back to zero, giving up the heap form.
    pub fn clear(&mut self) {
        *self = ExactSum::default();
    }

    /// Whether the sum has moved to the heap form (for state sizes).
    pub fn is_wide(&self) -> bool {
        self.wide.is_some()
    }

    #[inline]
    fn apply(&mut self, term: Term, subtract: bool) {
        match term {
            Term::Zero => {}
            Term::Finite {
                negative,
                magnitude,
                exponent,
            } => {
                let negative = negative != subtract;
                if self.wide.is_none() && fits_narrow(&self.narrow, magnitude, exponent) {
                    let offset = (exponent - NARROW_LOW) as usize;
                    let bits = 128 - magnitude.leading_zeros() as usize;
                    if offset >= 64 && offset + bits <= 191 {
                        add_to_middle(&mut self.narrow, magnitude << (offset - 64), negative);
                    } else {
                        add_shifted(&mut self.narrow, offset, magnitude, negative);
                    }
                } else {
                    self.widen().add(magnitude, exponent, negative);
                }
            }
            Term::Nan => {
                let wide = self.widen();
                wide.nans = step(wide.nans, subtract);
            }
            Term::Infinity { negative } => {
                let wide = self.widen();
                let count = if negative {
                    &mut wide.negative_infinities
                } else {
                    &mut wide.positive_infinities
                };
                *count = step(*count, subtract);
            }
        }
    }

    /// The heap form, made from the inline one the first time.
    #[cold]
    fn widen(&mut self) -> &mut WideSum {
        let narrow = self.narrow;
        self.wide.get_or_insert_with(|| {
            Box::new(WideSum {
                limbs: narrow.to_vec(),
                low: NARROW_LOW,
                nans: 0,
                positive_infinities: 0,
                negative_infinities: 0,
            })
        })
    }

    /// The finite part's limbs and their lowest bit's exponent.
    fn limbs(&self) -> (&[u64], i32) {
        match &self.wide {
            None => (&self.narrow, NARROW_LOW),
            Some(wide) => (&wide.limbs, wide.low),
        }
    }

    /// The sum of NaNs and infinities added, if any: NaN when there is a
    /// NaN or infinities of both signs (as float addition gives), else the
    /// infinity.
    fn non_finite(&self) -> Option<f64> {
        let wide = self.wide.as_deref()?;
        match (
            wide.nans > 0,
            wide.positive_infinities > 0,
            wide.negative_infinities > 0,
        ) {
            (true, _, _) | (false, true, true) => Some(f64::NAN),
            (false, true, false) => Some(f64::INFINITY),
            (false, false, true) => Some(f64::NEG_INFINITY),
            (false, false, false) => None,
        }
    }

    /// The sum, rounded once to the nearest float (ties to even); an exact
    /// zero is `+0.0`.
    #[inline]
    pub fn value(&self) -> f64 {
        if let Some(special) = self.non_finite() {
            return special;
        }
        if self.wide.is_none() {
            if let Some(middle) = middle_alone(&self.narrow) {
                // The conversion rounds to nearest, ties to even, and
                // scaling by a power of two above the subnormals is exact.
                return middle as f64 * power_of_two(-64);
            }
            let mut magnitude = self.narrow;
            let negative = negate_if_negative(&mut magnitude);
            return round(&magnitude, NARROW_LOW, negative);
        }
        let (limbs, low) = self.limbs();
        let mut magnitude = limbs.to_vec();
        let negative = negate_if_negative(&mut magnitude);
        round(&magnitude, low, negative)
    }
}

/// The population variance of `count` values with exact sum `sum` and
/// exact sum of squares `squares`: `(n·Σx² − (Σx)²) / n²`, its numerator
/// computed exactly and rounded once, so that it is a function of the
/// values alone and loses no digits to cancellation. NaN when a value is
/// not finite.
pub fn variance(count: u64, sum: &ExactSum, squares: &ExactSum) -> f64 {
    if sum.non_finite().is_some() || squares.non_finite().is_some() {
        return f64::NAN;
    }
    let (sum_limbs, sum_low) = sum.limbs();
    let (square_limbs, square_low) = squares.limbs();
    let mut total = sum_limbs.to_vec();
    negate_if_negative(&mut total);
    let total_squared = square(&total);
    // Both sides at the lower of the two scales: (Σx)² at 2^(2·low).
    let low = (2 * sum_low).min(square_low);
    let mut numerator = vec![0u64; (square_low - low) as usize / 64];
    numerator.extend(multiply_small(square_limbs, count));
    let squared_shift = (2 * sum_low - low) as usize / 64;
    let mut shifted = vec![0u64; squared_shift];
    shifted.extend(total_squared);
    // n·Σx² ≥ (Σx)² for any values (Cauchy–Schwarz), so this never borrows
    // out of the top.
    subtract_in_place(&mut numerator, &shifted);
    let n = count as f64;
    round(&numerator, low, false) / (n * n)
}

/// Whether a term fits the inline accumulator: its bits lie between the
/// lowest and the top two, and the total leaves room for it.
#[inline]
fn fits_narrow(limbs: &[u64; NARROW_LIMBS], magnitude: u128, exponent: i32) -> bool {
    let top = limbs[NARROW_LIMBS - 1] as i64;
    let offset = exponent - NARROW_LOW;
    let bits = 128 - magnitude.leading_zeros() as i32;
    offset >= 0
        && offset + bits <= (64 * NARROW_LIMBS) as i32 - 2
        && (-HEADROOM..HEADROOM).contains(&top)
}

impl WideSum {
    /// Adds `±magnitude · 2^exponent`, first growing the limbs to cover it
    /// with room to spare.
    fn add(&mut self, magnitude: u128, exponent: i32, negative: bool) {
        if exponent < self.low {
            let low = exponent.div_euclid(64) * 64;
            let added = ((self.low - low) / 64) as usize;
            self.limbs.splice(0..0, std::iter::repeat_n(0, added));
            self.low = low;
        }
        let offset = (exponent - self.low) as usize;
        let bits = 128 - magnitude.leading_zeros() as usize;
        loop {
            let top = *self.limbs.last().unwrap_or(&0) as i64;
            let room = offset + bits + 2 <= 64 * self.limbs.len();
            if room && (-HEADROOM..HEADROOM).contains(&top) {
                break;
            }
            let sign = if top < 0 { u64::MAX } else { 0 };
            self.limbs.push(sign);
        }
        add_shifted(&mut self.limbs, offset, magnitude, negative);
    }
}

/// The inline accumulator's usual case: values between 2^-64 and 2^63
/// with no bits below 2^-64 (amounts with cents, counts, most measures)
/// lie in its two middle limbs, added as one 128-bit integer with the
/// carry into the top limb.
#[inline]
fn add_to_middle(limbs: &mut [u64; NARROW_LIMBS], term: u128, negative: bool) {
    let middle = u128::from(limbs[1]) | (u128::from(limbs[2]) << 64);
    let (sum, carry) = if negative {
        middle.overflowing_sub(term)
    } else {
        middle.overflowing_add(term)
    };
    limbs[1] = sum as u64;
    limbs[2] = (sum >> 64) as u64;
    limbs[3] = if negative {
        limbs[3].wrapping_sub(u64::from(carry))
    } else {
        limbs[3].wrapping_add(u64::from(carry))
    };
}

/// The inline sum times 2^64 as a 128-bit integer, when that holds all of
/// it: no bits below 2^-64, and a top limb that only extends the sign.
#[inline]
fn middle_alone(limbs: &[u64; NARROW_LIMBS]) -> Option<i128> {
    let middle = (u128::from(limbs[1]) | (u128::from(limbs[2]) << 64)) as i128;
    let sign = (middle >> 127) as u64;
    (limbs[0] == 0 && limbs[3] == sign).then_some(middle)
}

/// Adds (or subtracts) `magnitude · 2^offset` to a two's-complement
/// integer, which has room for it.
#[inline]
fn add_shifted(limbs: &mut [u64], offset: usize, magnitude: u128, negative: bool) {
    let (at, shift) = (offset / 64, offset % 64);
    let low = magnitude << shift;
    let high = if shift == 0 {
        0
    } else {
        (magnitude >> (128 - shift)) as u64
    };
    let pieces = [low as u64, (low >> 64) as u64, high];
    let mut carry = false;
    for (index, limb) in limbs.iter_mut().enumerate().skip(at) {
        let piece = pieces.get(index - at).copied().unwrap_or(0);
        let (first, over) = if negative {
            limb.overflowing_sub(piece)
        } else {
            limb.overflowing_add(piece)
        };
        let (second, again) = if negative {
            first.overflowing_sub(u64::from(carry))
        } else {
            first.overflowing_add(u64::from(carry))
        };
        *limb = second;
        carry = over || again;
        if index - at >= 2 && !carry {
            break;
        }
    }
}

/// Turns a two's-complement integer into its magnitude; returns whether
/// it was negative.
fn negate_if_negative(limbs: &mut [u64]) -> bool {
    let negative = limbs.last().is_some_and(|top| (*top as i64) < 0);
    if negative {
        let mut carry = true;
        for limb in limbs.iter_mut() {
            let (sum, over) = (!*limb).overflowing_add(u64::from(carry));
            *limb = sum;
            carry = over;
        }
    }
    negative
}

/// `magnitude · 2^low`, rounded to the nearest float (ties to even).
#[inline]
fn round(magnitude: &[u64], low: i32, negative: bool) -> f64 {
    let Some(top) = magnitude.iter().rposition(|limb| *limb != 0) else {
        return 0.0;
    };
    // The 64 bits from the highest set one down, with every bit below
    // them folded into the lowest: the conversion to a float then rounds
    // as the whole number would (the folded bit tells a tie from more).
    let highest = 64 * top + 63 - magnitude[top].leading_zeros() as usize;
    let (window, start) = if highest < 64 {
        (magnitude[0], 0)
    } else {
        let start = highest - 63;
        let (at, shift) = (start / 64, start % 64);
        let mut window = magnitude[at] >> shift;
        if shift > 0 {
            window |= magnitude[at + 1] << (64 - shift);
        }
        let below_in_limb = shift > 0 && magnitude[at] << (64 - shift) != 0;
        let below = below_in_limb || magnitude[..at].iter().any(|limb| *limb != 0);
        (window | u64::from(below), start)
    };
    let rounded = scale(window as f64, low + start as i32);
    if negative { -rounded } else { rounded }
}

/// `number · 2^exponent`, in steps that each stay within a float's
/// exponents, so that only the last one can round.
fn scale(mut number: f64, mut exponent: i32) -> f64 {
    const STEP: i32 = 960;
    while exponent > STEP {
        number *= power_of_two(STEP);
        exponent -= STEP;
    }
    while exponent < -STEP {
        number *= power_of_two(-STEP);
        exponent += STEP;
    }
    number * power_of_two(exponent)
}

/// 2^`exponent` for an exponent of a normal float.
fn power_of_two(exponent: i32) -> f64 {
    f64::from_bits(((exponent + 1023) as u64) << 52)
}

/// The square of a magnitude.
fn square(limbs: &[u64]) -> Vec<u64> {
    let mut product = vec![0u64; 2 * limbs.len()];
    for (i, left) in limbs.iter().enumerate() {
        let mut carry = 0u128;
        for (j, right) in limbs.iter().enumerate() {
            let sum = u128::from(*left) * u128::from(*right) + u128::from(product[i + j]) + carry;
            product[i + j] = sum as u64;
            carry = sum >> 64;
        }
        product[i + limbs.len()] = carry as u64;
    }
    product
}

/// A non-negative integer times a count.
fn multiply_small(limbs: &[u64], factor: u64) -> Vec<u64> {
    let mut product = Vec::with_capacity(limbs.len() + 1);
    let mut carry = 0u128;
    for limb in limbs {
        let sum = u128::from(*limb) * u128::from(factor) + carry;
        product.push(sum as u64);
        carry = sum >> 64;
    }
    product.push(carry as u64);
    product
}

/// `left -= right`, for `left ≥ right`.
fn subtract_in_place(left: &mut Vec<u64>, right: &[u64]) {
    if left.len() < right.len() {
        left.resize(right.len(), 0);
    }
    let mut borrow = false;
    for (index, limb) in left.iter_mut().enumerate() {
        let piece = right.get(index).copied().unwrap_or(0);
        if index >= right.len() && !borrow {
            break;
        }
        let (first, over) = limb.overflowing_sub(piece);
        let (second, again) = first.overflowing_sub(u64::from(borrow));
        *limb = second;
        borrow = over || again;
    }
}

/// A count up or down by one.
fn step(count: u64, down: bool) -> u64 {
    if down { count - 1 } else { count + 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum_of(numbers: &[f64]) -> ExactSum {
        let mut sum = ExactSum::default();
        numbers.iter().for_each(|number| sum.add(*number));
        sum
    }

    #[test]
    fn a_sum_does_not_remember_what_left_it() {
        let mut sum = sum_of(&[0.1, 0.2, 1e9, 19.95]);
        sum.remove(1e9);
        sum.remove(0.2);
        assert_eq!(sum.value(), sum_of(&[19.95, 0.1]).value());
        // 0.1 + 19.95 rounded once, not 0.1 + 0.2 + 1e9 + 19.95 − 1e9 − 0.2.
        assert_eq!(sum.value(), 20.05);
    }

    #[test]
    fn a_sum_is_rounded_once() {
        // Float addition gives 0 (1e16 + 1 rounds to 1e16, then − 1e16);
        // the true sum is 1.
        assert_eq!(sum_of(&[1e16, 1.0, -1e16]).value(), 1.0);
        // A tie between two floats rounds to the even one; anything past
        // the tie rounds up.
        assert_eq!(sum_of(&[1.0, f64::EPSILON / 2.0]).value(), 1.0);
        let past_tie = sum_of(&[1.0, f64::EPSILON / 2.0, 1e-300]).value();
        assert_eq!(past_tie, 1.0 + f64::EPSILON);
    }

    #[test]
    fn values_outside_the_inline_range_widen_without_changing_results() {
        let numbers = [1e300, -1e-300, 5e-324, 1e-20, -1e300, 3.0];
        let mut sum = sum_of(&numbers);
        assert!(sum.is_wide());
        assert_eq!(sum.value(), 3.0 + 1e-20);
        sum.remove(3.0);
        sum.remove(1e-20);
        // −1e-300 + 5e-324: a subnormal-scale difference, exact.
        assert_eq!(sum.value(), -1e-300 + 5e-324);
        // Overflow of the true sum rounds to infinity.
        assert_eq!(sum_of(&[f64::MAX, f64::MAX]).value(), f64::INFINITY);
        assert_eq!(sum_of(&[f64::MAX, f64::MAX, -f64::MAX]).value(), f64::MAX);
    }

    #[test]
    fn nans_and_infinities_count_until_removed() {
        let mut sum = sum_of(&[1.0, f64::INFINITY, 2.0]);
        assert_eq!(sum.value(), f64::INFINITY);
        sum.add(f64::NEG_INFINITY);
        assert!(sum.value().is_nan());
        sum.remove(f64::INFINITY);
        assert_eq!(sum.value(), f64::NEG_INFINITY);
        sum.remove(f64::NEG_INFINITY);
        sum.add(f64::NAN);
        assert!(sum.value().is_nan());
        sum.remove(f64::NAN);
        assert_eq!(sum.value(), 3.0);
    }

    #[test]
    fn a_long_lifetime_sum_grows_past_the_inline_limbs() {
        let mut sum = ExactSum::default();
        for _ in 0..64 {
            sum.add(2f64.powi(120));
        }
        assert!(sum.is_wide());
        assert_eq!(sum.value(), 2f64.powi(126));
        for _ in 0..64 {
            sum.remove(2f64.powi(120));
        }
        assert_eq!(sum.value(), 0.0);
    }

    fn std_of(numbers: &[f64]) -> f64 {
        let (mut sum, mut squares) = (ExactSum::default(), ExactSum::default());
        for number in numbers {
            sum.add(*number);
            squares.add_square(*number);
        }
        variance(numbers.len() as u64, &sum, &squares).sqrt()
    }

    #[test]
    fn std_keeps_cents_on_large_amounts() {
        // Two amounts 2 cents apart: a population std of half their
        // difference (exact in floats). The textbook Σx² − (Σx)²/n loses
        // every digit of it at 1e9.
        let (low, high) = (1e9 + 0.01, 1e9 + 0.03);
        let std = std_of(&[low, high]);
        let expected: f64 = (high - low) / 2.0;
        assert!((std - expected).abs() <= expected * 1e-15, "{std}");
        assert_eq!(std_of(&[1e9 + 0.01; 5]), 0.0);
        assert_eq!(std_of(&[-2.0, 2.0]), 2.0);
        assert!(std_of(&[1.0, f64::NAN]).is_nan());
        // Squares below the inline range (0.001² needs bits past 2^-128).
        let small = std_of(&[1e-30, 3e-30]);
        assert!((small - 1e-30).abs() < 1e-44, "{small}");
    }
}
