//! Client times and skews as exact integers (SPEC §3).
//!
//! Times are never `f64`: `1.10` is older than `1.9`, and `1.5` equals
//! `1.500000000`. Pure code: the caller reads the clock and passes it in.

use std::fmt;

const NANOS_PER_SEC: u32 = 1_000_000_000;

/// A non-negative POSIX time with nanosecond precision.
///
/// Ordering is field by field, which is exact decimal order because `nanos`
/// is always below one second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp {
    secs: u64,
    nanos: u32,
}

impl Timestamp {
    /// The time `secs` seconds and `nanos` nanoseconds after the epoch.
    /// `nanos` must be below one second.
    pub fn new(secs: u64, nanos: u32) -> Option<Self> {
        (nanos < NANOS_PER_SEC).then_some(Self { secs, nanos })
    }

    /// Parses a client time: ASCII digits with an optional fraction of one
    /// to nine digits. No sign, exponent, `_` or surrounding whitespace.
    pub fn parse(text: &[u8]) -> Option<Self> {
        let (whole, fraction) = match text.iter().position(|&b| b == b'.') {
            Some(dot) => (&text[..dot], Some(&text[dot + 1..])),
            None => (text, None),
        };
        let secs = parse_digits_u64(whole)?;
        let nanos = match fraction {
            None => 0,
            Some(digits) if (1..=9).contains(&digits.len()) => {
                let value = parse_digits_u64(digits)?;
                let scale = 10u64.pow(9 - digits.len() as u32);
                u32::try_from(value * scale).expect("nine digits fit in u32")
            }
            Some(_) => return None,
        };
        Some(Self { secs, nanos })
    }

    /// The whole seconds.
    pub fn secs(self) -> u64 {
        self.secs
    }

    /// The nanoseconds past the whole second.
    pub fn subsec_nanos(self) -> u32 {
        self.nanos
    }

    /// Total nanoseconds since the epoch, exact.
    pub fn as_nanos(self) -> i128 {
        i128::from(self.secs) * i128::from(NANOS_PER_SEC) + i128::from(self.nanos)
    }
}

impl fmt::Display for Timestamp {
    /// Always nine fraction digits; used in logs and tests, never to echo a
    /// client's time (the client's own text is echoed).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:09}", self.secs, self.nanos)
    }
}

/// Parses one or more ASCII digits into a `u64`, refusing overflow.
pub(crate) fn parse_digits_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// The difference `received - sent` in nanoseconds, as the AT line's skew
/// field: an explicit sign (`+` for zero), the whole seconds without leading
/// zeros, a point and exactly nine digits.
pub fn format_skew(received_nanos: i128, sent: Timestamp) -> String {
    String::from_utf8(SkewText::new(received_nanos, sent).as_bytes().to_vec())
        .expect("the skew is ASCII")
}

/// The skew field's text, built on the stack: every accepted IAMAT formats
/// one, and its AT line is then allocated at its exact length (a million
/// stored lines would otherwise carry a million spare tails). The usual
/// case (a skew under 584 years) uses 64-bit arithmetic and no formatting
/// machinery.
pub struct SkewText {
    /// Sign, at most 30 digits (any `i128` difference), point, 9 digits.
    bytes: [u8; 48],
    len: usize,
}

impl SkewText {
    pub fn new(received_nanos: i128, sent: Timestamp) -> Self {
        let mut text = SkewText {
            bytes: [0; 48],
            len: 0,
        };
        let diff = received_nanos - sent.as_nanos();
        text.push(&[if diff < 0 { b'-' } else { b'+' }]);
        let magnitude = diff.unsigned_abs();
        match u64::try_from(magnitude) {
            Ok(magnitude) => {
                let per_sec = u64::from(NANOS_PER_SEC);
                let mut secs = magnitude / per_sec;
                let mut digits = [0u8; 20];
                let mut start = digits.len();
                loop {
                    start -= 1;
                    digits[start] = b'0' + (secs % 10) as u8;
                    secs /= 10;
                    if secs == 0 {
                        break;
                    }
                }
                text.push(&digits[start..]);
                let mut fraction = [b'.', b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0'];
                let mut rest = magnitude % per_sec;
                for digit in fraction[1..].iter_mut().rev() {
                    *digit = b'0' + (rest % 10) as u8;
                    rest /= 10;
                }
                text.push(&fraction);
            }
            Err(_) => {
                let per_sec = u128::from(NANOS_PER_SEC);
                let long = format!("{}.{:09}", magnitude / per_sec, magnitude % per_sec);
                text.push(long.as_bytes());
            }
        }
        text
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn push(&mut self, bytes: &[u8]) {
        self.bytes[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ts(text: &str) -> Option<Timestamp> {
        Timestamp::parse(text.as_bytes())
    }

    #[track_caller]
    fn check(text: &str, valid: bool) {
        assert_eq!(ts(text).is_some(), valid, "{text:?}");
    }

    #[test]
    fn grammar() {
        check("1621464827.959498503", true);
        check("0", true);
        check("0.0", true);
        check("1621464827", true);
        check("1.123456789", true);
        check("1.1234567890", false);
        check("1.", false);
        check(".5", false);
        check("", false);
        check("+1", false);
        check("-1", false);
        check("1e9", false);
        check("1_000", false);
        check(" 1", false);
        check("1 ", false);
        check("inf", false);
        check("nan", false);
        check("1.5.5", false);
        check("18446744073709551615", true);
        check("18446744073709551616", false);
    }

    #[test]
    fn comparison_is_exact() {
        assert_eq!(ts("1.5"), ts("1.500000000"));
        assert!(ts("1.10") < ts("1.9"));
        assert!(ts("1.000000001") > ts("1"));
        assert!(ts("2") > ts("1.999999999"));
        // A float would call these equal.
        assert!(ts("1621464827.959498504") > ts("1621464827.959498503"));
    }

    #[test]
    fn skew_format() {
        let sent = ts("1621464827.959498503").unwrap();
        let received = sent.as_nanos() + 263_873_386;
        assert_eq!(format_skew(received, sent), "+0.263873386");
        assert_eq!(format_skew(sent.as_nanos(), sent), "+0.000000000");
        assert_eq!(format_skew(sent.as_nanos() - 1, sent), "-0.000000001");
        assert_eq!(
            format_skew(sent.as_nanos() - 12_000_000_001, sent),
            "-12.000000001"
        );
        assert_eq!(
            format_skew(0, ts("1621464827").unwrap()),
            "-1621464827.000000000"
        );
    }

    proptest! {
        #[test]
        fn order_matches_decimal_order(a in 0u64..1_000_000, an in 0u32..1_000_000_000,
                                       b in 0u64..1_000_000, bn in 0u32..1_000_000_000) {
            let x = ts(&format!("{a}.{an:09}")).unwrap();
            let y = ts(&format!("{b}.{bn:09}")).unwrap();
            prop_assert_eq!(x.cmp(&y), (a, an).cmp(&(b, bn)));
        }

        #[test]
        fn display_round_trips(secs in any::<u64>(), nanos in 0u32..1_000_000_000) {
            let t = Timestamp::new(secs, nanos).unwrap();
            prop_assert_eq!(ts(&t.to_string()), Some(t));
        }

        #[test]
        fn trailing_zeros_do_not_change_the_time(secs in 0u64..u64::MAX, frac in "[0-9]{1,8}") {
            let short = ts(&format!("{secs}.{frac}")).unwrap();
            let padded = ts(&format!("{secs}.{frac}0")).unwrap();
            prop_assert_eq!(short, padded);
        }

        #[test]
        fn skew_matches_the_reference_format(received in any::<i128>(), secs in any::<u64>(),
                                             nanos in 0u32..1_000_000_000, near in any::<i64>()) {
            let sent = Timestamp::new(secs, nanos).unwrap();
            // Anywhere, and within 2^63 ns of the sent time (the usual case).
            for received in [received >> 2, sent.as_nanos() + i128::from(near)] {
                let diff = received - sent.as_nanos();
                let magnitude = diff.unsigned_abs();
                let reference = format!(
                    "{}{}.{:09}",
                    if diff < 0 { '-' } else { '+' },
                    magnitude / 1_000_000_000,
                    magnitude % 1_000_000_000
                );
                prop_assert_eq!(format_skew(received, sent), reference);
            }
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = Timestamp::parse(&bytes);
        }
    }
}
