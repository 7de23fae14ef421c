//! Sums of logged amounts (grams, kilocalories, milligrams) that do not depend on the order
//! their terms were added in.
//!
//! Floating-point addition is not associative: the protein of four meals of 17.0, 30.3, 20.9
//! and 31.8 g adds up to 100.0 in one order and to 99.999 999 999 999 99 in another. A target
//! of 100 g would then be reached or not depending on the order a state happens to hold its
//! meals in (by meal id), and an independent computation would disagree with it. A sum that
//! is compared with a target, or shown in a row, is therefore [`settled`] first: rounded to
//! [`RESOLUTION`], far finer than any amount a player logs and far coarser than the rounding
//! error of a sum of a few thousand terms.

/// Steps of [`RESOLUTION`] in one unit; also the scale of the partial rows' fixed-point sums
/// ([`Sum::millionths`](crate::Sum::millionths)), so both round at the same resolution.
pub(crate) const PER_UNIT: f64 = 1e6;

/// The finest amount a settled sum tells apart: a millionth of the unit (µg of protein,
/// thousandths of a calorie, ng of sodium).
pub const RESOLUTION: f64 = 1.0 / PER_UNIT;

/// Settled sums are multiples of [`RESOLUTION`] up to this magnitude (2^53 resolutions, where
/// a double stops holding every multiple); larger ones are returned as they are.
const LIMIT: f64 = 9_007_199_254.740_992;

/// `sum` rounded to the nearest multiple of [`RESOLUTION`] (the double nearest to that
/// decimal, as if it had been parsed from it). Sums that differ only by the order of their
/// terms settle to the same value. Not finite, or beyond ±9 007 199 254: unchanged.
pub fn settled(sum: f64) -> f64 {
    if !sum.is_finite() || sum.abs() >= LIMIT {
        return sum;
    }
    // Both operands of the division are exact, so the quotient is the correctly rounded
    // decimal.
    (sum * PER_UNIT).round() / PER_UNIT
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(terms: &[f64]) -> f64 {
        terms.iter().sum()
    }

    #[test]
    fn every_order_of_the_same_terms_settles_to_the_same_sum() {
        let terms = [17.0, 30.3, 20.9, 31.8];
        // The raw sums differ: without settling, a target of 100 g is reached in one order
        // only.
        let (a, b) = (sum(&terms), sum(&[17.0, 30.3, 31.8, 20.9]));
        assert!(a < 100.0 && b >= 100.0, "{a} {b}");
        let mut orders = vec![terms.to_vec()];
        for i in 0..terms.len() {
            for j in 0..terms.len() {
                let mut order = terms.to_vec();
                order.swap(i, j);
                order.rotate_left(i);
                orders.push(order);
            }
        }
        for order in orders {
            assert_eq!(settled(sum(&order)), 100.0, "{order:?}");
        }
        assert_eq!(RESOLUTION, 1e-6);
        assert_eq!(settled(0.1 + 0.2), 0.3);
        assert_eq!(settled(-(0.1 + 0.2)), -0.3);
    }

    #[test]
    fn amounts_finer_than_the_resolution_are_rounded_and_coarser_ones_kept() {
        assert_eq!(settled(12.345_678_9), 12.345_679);
        assert_eq!(settled(12.345_678), 12.345_678);
        assert_eq!(settled(0.000_000_4), 0.0);
        assert_eq!(settled(2_500.0), 2_500.0);
        assert_eq!(settled(1_000_000.123_456_7), 1_000_000.123_457);
    }

    #[test]
    fn huge_and_non_finite_sums_are_unchanged() {
        for x in [
            1e12 + 0.123_456_789,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -1e15,
        ] {
            assert_eq!(settled(x), x);
        }
        assert!(settled(f64::NAN).is_nan());
    }
}
