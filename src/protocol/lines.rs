//! Client lines to requests, and requests to reply text (SPEC §2–§5).
//!
//! Pure code working on bytes: client ids and every echoed field may hold
//! any non-whitespace byte, valid UTF-8 or not, and are echoed exactly.
//! Framing (bytes into lines) lives in `framing`.

use crate::protocol::time::{SkewText, Timestamp, parse_digits_u64};

/// The field separators of SPEC §2: space, tab, `\r`, `\f` and `\v`.
///
/// Not `u8::is_ascii_whitespace`, which leaves out `\v` (0x0b).
pub fn is_separator(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\r' | b'\x0c' | b'\x0b')
}

/// The fields of a line, split on runs of separators.
pub fn fields(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|&b| is_separator(b)).filter(|f| !f.is_empty())
}

/// A latitude and longitude in degrees, checked to lie on the globe.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Location {
    pub lat: f64,
    pub lng: f64,
}

impl Location {
    /// Parses ISO 6709 style `+34.068930-118.445127`: each coordinate a
    /// mandatory sign, digits and an optional fraction. The range check is
    /// exact on the decimal text, so `+90.0000000001+0` is refused.
    pub fn parse(text: &[u8]) -> Option<Self> {
        let (lat, rest) = signed_decimal(text, 90)?;
        let (lng, rest) = signed_decimal(rest, 180)?;
        if !rest.is_empty() {
            return None;
        }
        Some(Self { lat, lng })
    }
}

/// A signed coordinate whose magnitude is at most `limit`, exactly: all of
/// `text`.
#[cfg(test)]
fn coordinate(text: &[u8], limit: u64) -> Option<f64> {
    signed_decimal(text, limit)
        .filter(|(_, rest)| rest.is_empty())
        .map(|(value, _)| value)
}

/// Takes a signed decimal (`[+-]digits[.digits]`) whose magnitude is at
/// most `limit`, exactly, off the front of `text`: its value and the rest
/// (which must then start with the next sign or be empty). One pass over
/// the digits, which are also the number's digits.
fn signed_decimal(text: &[u8], limit: u64) -> Option<(f64, &[u8])> {
    let (&sign, body) = text.split_first()?;
    if sign != b'+' && sign != b'-' {
        return None;
    }
    let digits_of = |from: usize| {
        body[from..]
            .iter()
            .position(|b| !b.is_ascii_digit())
            .map_or(body.len(), |i| from + i)
    };
    let whole_end = digits_of(0);
    // Saturating: a whole part past u64 is past any limit too.
    let whole_value = body[..whole_end].iter().fold(0u64, |acc, &b| {
        acc.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    });
    let (fraction, end) = match body.get(whole_end) {
        Some(b'.') => {
            let end = digits_of(whole_end + 1);
            (Some(&body[whole_end + 1..end]), end)
        }
        _ => (None, whole_end),
    };
    if whole_end == 0 || fraction.is_some_and(<[u8]>::is_empty) {
        return None;
    }
    if matches!(body.get(end), Some(&b) if b != b'+' && b != b'-') {
        return None;
    }
    let fraction_is_zero = fraction.is_none_or(|f| f.iter().all(|&b| b == b'0'));
    if whole_value > limit || (whole_value == limit && !fraction_is_zero) {
        return None;
    }
    // Validated ASCII digits with a sign: the nearest f64 to the text (the
    // comparisons above were done on the text, exactly).
    let value = match fraction {
        // Clinger's fast path, for the usual few digits: both the digits as
        // an integer (below 2^53) and the power of ten (at most 10^22) are
        // exact doubles, so one IEEE division gives the correctly rounded
        // value, as the standard parser would, at a fraction of its cost.
        Some(fraction) if whole_end + fraction.len() <= 15 => {
            let digits = fraction
                .iter()
                .fold(whole_value, |acc, &b| acc * 10 + u64::from(b - b'0'));
            digits as f64 / POWERS_OF_TEN[fraction.len()]
        }
        None if whole_end <= 15 => whole_value as f64,
        _ => std::str::from_utf8(&body[..end]).ok()?.parse().ok()?,
    };
    Some((if sign == b'-' { -value } else { value }, &body[end..]))
}

/// 10^0 ..= 10^15, each exact as an f64.
const POWERS_OF_TEN: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// Splits `digits[.digits]` into its whole and fraction parts, checking that
/// both are non-empty runs of ASCII digits.
fn split_decimal(text: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let all_digits = |part: &[u8]| !part.is_empty() && part.iter().all(u8::is_ascii_digit);
    match text.iter().position(|&b| b == b'.') {
        Some(dot) => {
            let (whole, fraction) = (&text[..dot], &text[dot + 1..]);
            (all_digits(whole) && all_digits(fraction)).then_some((whole, Some(fraction)))
        }
        None => all_digits(text).then_some((text, None)),
    }
}

/// A WHATSAT radius: more than 0 and at most 50 km, checked exactly.
#[derive(Clone, Debug, PartialEq)]
pub struct Radius {
    /// The radius in metres, as exact decimal text (`10` km is `10000`).
    pub metres_text: String,
    /// The radius in metres, for geometry.
    pub metres: f64,
}

impl Radius {
    /// The most a WHATSAT may ask for, in whole kilometres.
    pub const MAX_KM: u64 = 50;

    /// Parses unsigned decimal kilometres, `0 < r <= 50`.
    pub fn parse(text: &[u8]) -> Option<Self> {
        let (whole, fraction) = split_decimal(text)?;
        let whole_value = parse_digits_u64(whole)?;
        let fraction = fraction.unwrap_or(b"");
        let fraction_is_zero = fraction.iter().all(|&b| b == b'0');
        if whole_value > Self::MAX_KM
            || (whole_value == Self::MAX_KM && !fraction_is_zero)
            || (whole_value == 0 && fraction_is_zero)
        {
            return None;
        }
        // Micrometres are finer than any provider looks; keeping at most six
        // decimals bounds the text (and so cache keys and URLs) whatever the
        // client sent, and rounding up keeps a tiny radius above zero.
        let metres_text = kilometres_to_metres_text(whole_value, fraction);
        let metres_text = limit_decimals(&metres_text, 6);
        let metres = metres_text.parse().ok()?;
        Some(Self {
            metres_text,
            metres,
        })
    }
}

/// `text` (digits, maybe a point and more digits) with at most `places`
/// decimals, rounded up, without trailing zeros.
fn limit_decimals(text: &str, places: usize) -> String {
    let Some((whole, fraction)) = text.split_once('.') else {
        return text.to_owned();
    };
    if fraction.len() <= places {
        return text.to_owned();
    }
    let kept = &fraction[..places];
    let dropped_nonzero = fraction[places..].bytes().any(|b| b != b'0');
    let mut digits: Vec<u8> = format!("{whole}{kept}").into_bytes();
    if dropped_nonzero {
        // Add one unit in the last kept place, carrying.
        let mut i = digits.len();
        loop {
            if i == 0 {
                digits.insert(0, b'1');
                break;
            }
            i -= 1;
            if digits[i] == b'9' {
                digits[i] = b'0';
            } else {
                digits[i] += 1;
                break;
            }
        }
    }
    let split = digits.len() - places;
    let whole = std::str::from_utf8(&digits[..split]).expect("ASCII digits");
    let fraction = std::str::from_utf8(&digits[split..])
        .expect("ASCII digits")
        .trim_end_matches('0');
    if fraction.is_empty() {
        whole.to_owned()
    } else {
        format!("{whole}.{fraction}")
    }
}

/// Shifts the decimal point three places: `1.2345` km is `1234.5` m.
fn kilometres_to_metres_text(whole: u64, fraction: &[u8]) -> String {
    let mut padded = fraction.to_vec();
    while padded.len() < 3 {
        padded.push(b'0');
    }
    let (to_whole, rest) = padded.split_at(3);
    let extra = parse_digits_u64(to_whole).expect("three ASCII digits");
    let mut text = (whole * 1000 + extra).to_string();
    let rest = std::str::from_utf8(rest)
        .expect("ASCII digits")
        .trim_end_matches('0');
    if !rest.is_empty() {
        text.push('.');
        text.push_str(rest);
    }
    text
}

/// The most places a WHATSAT may ask for.
pub const MAX_BOUND: usize = 20;

/// An `IAMAT` report, with the client's own text kept for the echo.
#[derive(Clone, Debug, PartialEq)]
pub struct Iamat<'a> {
    pub client_id: &'a [u8],
    pub location_text: &'a [u8],
    pub location: Location,
    pub time_text: &'a [u8],
    pub client_time: Timestamp,
}

/// A `WHATSAT` query.
#[derive(Clone, Debug, PartialEq)]
pub struct Whatsat<'a> {
    pub client_id: &'a [u8],
    pub radius: Radius,
    pub bound: usize,
}

/// A valid client line.
#[derive(Clone, Debug, PartialEq)]
pub enum Request<'a> {
    Iamat(Iamat<'a>),
    Whatsat(Whatsat<'a>),
}

/// Why a line is not a valid request. The reply is `? <line>` whatever the
/// reason; the reason is for logs and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("unknown command or wrong number of fields")]
    Shape,
    #[error("malformed or out-of-range location")]
    Location,
    #[error("malformed client time")]
    Time,
    #[error("malformed or out-of-range radius")]
    Radius,
    #[error("malformed or out-of-range bound")]
    Bound,
}

/// Parses one client line, without its line ending.
///
/// A WHATSAT for a client nobody has reported is syntactically valid here;
/// the server answers it with `?` once the store says the client is unknown.
pub fn parse_request(line: &[u8]) -> Result<Request<'_>, Invalid> {
    let mut parts = fields(line);
    let (Some(verb), Some(a), Some(b), Some(c), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(Invalid::Shape);
    };
    match verb {
        b"IAMAT" => Ok(Request::Iamat(Iamat {
            client_id: a,
            location_text: b,
            location: Location::parse(b).ok_or(Invalid::Location)?,
            time_text: c,
            client_time: Timestamp::parse(c).ok_or(Invalid::Time)?,
        })),
        b"WHATSAT" => Ok(Request::Whatsat(Whatsat {
            client_id: a,
            radius: Radius::parse(b).ok_or(Invalid::Radius)?,
            bound: parse_bound(c).ok_or(Invalid::Bound)?,
        })),
        _ => Err(Invalid::Shape),
    }
}

fn parse_bound(text: &[u8]) -> Option<usize> {
    let value = parse_digits_u64(text)?;
    (1..=MAX_BOUND as u64)
        .contains(&value)
        .then(|| usize::try_from(value).expect("at most 20"))
}

/// The AT line for an accepted report, without a line ending:
/// `AT <server> <skew> <client id> <location> <client time>`.
pub fn format_at(server: &str, received_nanos: i128, iamat: &Iamat<'_>) -> Vec<u8> {
    let mut line = Vec::new();
    write_at(server, received_nanos, iamat, &mut line);
    line
}

/// Appends the AT line of [`format_at`] to `out` (the reply being built),
/// growing it at most once, and returns where in `out` the line lies.
pub fn write_at(
    server: &str,
    received_nanos: i128,
    iamat: &Iamat<'_>,
    out: &mut Vec<u8>,
) -> std::ops::Range<usize> {
    let skew = SkewText::new(received_nanos, iamat.client_time);
    let start = out.len();
    out.reserve(
        7 + server.len()
            + skew.as_bytes().len()
            + iamat.client_id.len()
            + iamat.location_text.len()
            + iamat.time_text.len(),
    );
    out.extend_from_slice(b"AT ");
    out.extend_from_slice(server.as_bytes());
    out.push(b' ');
    out.extend_from_slice(skew.as_bytes());
    for part in [iamat.client_id, iamat.location_text, iamat.time_text] {
        out.push(b' ');
        out.extend_from_slice(part);
    }
    start..out.len()
}

/// A stored AT line, as flooded between servers, taken apart again.
#[derive(Clone, Debug, PartialEq)]
pub struct AtLine<'a> {
    pub server: &'a [u8],
    pub client_id: &'a [u8],
    pub location: Location,
    pub client_time: Timestamp,
}

/// Parses and checks an AT line received from a neighbour, so that nothing
/// malformed is stored even if a neighbour misbehaves.
pub fn parse_at_line(line: &[u8]) -> Option<AtLine<'_>> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(b"AT"), Some(server), Some(skew), Some(client_id), Some(location), Some(time), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let no_separators =
        |field: &[u8]| !field.is_empty() && !field.iter().any(|&b| is_separator(b) || b == b'\n');
    // Server names are printable ASCII (the config checks it).
    let server_name = !server.is_empty() && server.iter().all(u8::is_ascii_graphic);
    if !(server_name && no_separators(client_id) && is_skew(skew)) {
        return None;
    }
    Some(AtLine {
        server,
        client_id,
        location: Location::parse(location)?,
        client_time: Timestamp::parse(time)?,
    })
}

/// `[+-]digits.ddddddddd`, the skew field's shape.
/// `[+-]digits.ddddddddd`, the skew field's shape, in the one way
/// `format_skew` writes it: no leading zeros, and zero is `+`.
fn is_skew(text: &[u8]) -> bool {
    let Some((&sign, rest)) = text.split_first() else {
        return false;
    };
    let Some((whole, Some(fraction))) = split_decimal(rest) else {
        return false;
    };
    let zero = whole == b"0" && fraction.iter().all(|&b| b == b'0');
    matches!(sign, b'+' | b'-')
        && fraction.len() == 9
        && (whole == b"0" || whole[0] != b'0')
        && !(sign == b'-' && zero)
}

/// The reply to an invalid line: `? ` and the line exactly as received.
pub fn invalid_reply(line: &[u8], out: &mut Vec<u8>) {
    out.reserve(line.len() + 3);
    out.extend_from_slice(b"? ");
    out.extend_from_slice(line);
    out.push(b'\n');
}

/// The WHATSAT answer: the stored AT line, the places JSON with every run of
/// newlines collapsed and trailing newlines removed, then `\n\n`.
pub fn whatsat_reply(at_line: &[u8], json: &str, out: &mut Vec<u8>) {
    out.reserve(at_line.len() + json.len() + 3);
    out.extend_from_slice(at_line);
    out.push(b'\n');
    let json = json.trim_end_matches('\n');
    if json.contains("\n\n") {
        let mut previous_newline = false;
        for &byte in json.as_bytes() {
            let newline = byte == b'\n';
            if !(newline && previous_newline) {
                out.push(byte);
            }
            previous_newline = newline;
        }
    } else {
        // The usual case: nothing to collapse, copy it whole.
        out.extend_from_slice(json.as_bytes());
    }
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[track_caller]
    fn check(line: &str, valid: bool) {
        assert_eq!(parse_request(line.as_bytes()).is_ok(), valid, "{line:?}");
    }

    #[test]
    fn iamat_shape() {
        check(
            "IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503",
            true,
        );
        check("IAMAT kiwi +34-118 1", true);
        check("  IAMAT\tkiwi \x0b +34-118\x0c 1\r", true);
        check("IAMAT kiwi +34-118", false);
        check("IAMAT kiwi +34-118 1 extra", false);
        check("iamat kiwi +34-118 1", false);
        check("IAMAT", false);
        check("", false);
        check("   \t ", false);
        check("HELLO kiwi +34-118 1", false);
    }

    #[test]
    fn location_grammar() {
        for (text, valid) in [
            ("+34.068930-118.445127", true),
            ("+34-118", true),
            ("-90+180", true),
            ("+90.000-180.0000", true),
            ("+90.0000000001+0", false),
            ("+0+180.0000000001", false),
            ("+91+0", false),
            ("+0+181", false),
            ("34-118", false),
            ("+34", false),
            ("+34-118-1", false),
            ("+34.-118", false),
            ("+.5-118", false),
            ("+34e1-118", false),
            ("+inf-118", false),
            ("+nan+0", false),
            ("+34,5-118", false),
            ("++34-118", false),
            ("+34--118", false),
            ("+34-118 ", false),
            ("", false),
            ("+", false),
            ("+00000000000000000000000000090-0", true),
        ] {
            assert_eq!(
                Location::parse(text.as_bytes()).is_some(),
                valid,
                "{text:?}"
            );
        }
        let l = Location::parse(b"+34.068930-118.445127").unwrap();
        assert_eq!((l.lat, l.lng), (34.06893, -118.445127));
    }

    #[test]
    fn whatsat_bounds() {
        check("WHATSAT kiwi 50 20", true);
        check("WHATSAT kiwi 50.000 1", true);
        check("WHATSAT kiwi 0.001 1", true);
        check("WHATSAT kiwi 0 5", false);
        check("WHATSAT kiwi 0.000 5", false);
        check("WHATSAT kiwi 50.0001 5", false);
        check("WHATSAT kiwi 51 5", false);
        check("WHATSAT kiwi 10 21", false);
        check("WHATSAT kiwi 10 0", false);
        check("WHATSAT kiwi 10 020", true);
        check("WHATSAT kiwi +10 5", false);
        check("WHATSAT kiwi 10 +5", false);
        check("WHATSAT kiwi 1e1 5", false);
        check("WHATSAT kiwi 10. 5", false);
        check("WHATSAT kiwi .5 5", false);
        check("WHATSAT kiwi 10 5.0", false);
        check("WHATSAT kiwi 10", false);
        check("WHATSAT kiwi 10 5 6", false);
        check("WHATSAT kiwi 99999999999999999999999 5", false);
    }

    #[test]
    fn radius_in_metres_is_exact() {
        let metres = |km: &str| Radius::parse(km.as_bytes()).unwrap().metres_text;
        assert_eq!(metres("10"), "10000");
        assert_eq!(metres("0.5"), "500");
        assert_eq!(metres("1.2345"), "1234.5");
        assert_eq!(metres("0.0001"), "0.1");
        assert_eq!(metres("050.000000"), "50000");
        // At most six decimals of a metre, rounded up so nothing becomes 0.
        assert_eq!(metres("0.0000000001"), "0.000001");
        assert_eq!(metres("1.0000000001"), "1000.000001");
        assert_eq!(metres("0.9999999999"), "1000");
        assert_eq!(metres(&format!("1.{}", "0".repeat(5000))), "1000");
        assert!(
            Radius::parse(format!("0.{}1", "0".repeat(400)).as_bytes())
                .unwrap()
                .metres
                > 0.0
        );
        assert_eq!(Radius::parse(b"12.5").unwrap().metres, 12500.0);
    }

    #[test]
    fn at_line_echoes_fields_byte_for_byte() {
        let line = b"IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503";
        let Ok(Request::Iamat(iamat)) = parse_request(line) else {
            panic!("valid IAMAT");
        };
        let received = iamat.client_time.as_nanos() + 263_873_386;
        assert_eq!(
            format_at("Hill", received, &iamat),
            b"AT Hill +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503"
        );
        let odd = b"IAMAT \xff\xfe\xc3(caf\xc3\xa9 +00.0-000.00 0001.10";
        let Ok(Request::Iamat(iamat)) = parse_request(odd) else {
            panic!("non-UTF-8 client ids are valid");
        };
        let at = format_at("Smith", iamat.client_time.as_nanos(), &iamat);
        assert_eq!(
            at,
            b"AT Smith +0.000000000 \xff\xfe\xc3(caf\xc3\xa9 +00.0-000.00 0001.10"
        );
        let back = parse_at_line(&at).unwrap();
        assert_eq!(back.client_id, b"\xff\xfe\xc3(caf\xc3\xa9");
        assert_eq!(back.server, b"Smith");
    }

    #[test]
    fn at_lines_from_neighbours_are_checked() {
        assert!(parse_at_line(b"AT Hill +0.263873386 kiwi +34-118 1.5").is_some());
        assert!(parse_at_line(b"AT Hill -12.000000001 kiwi +34-118 1.5").is_some());
        for bad in [
            "AT Hill +0.26387338 kiwi +34-118 1.5",
            "AT Hill 0.263873386 kiwi +34-118 1.5",
            "AT Hill +0.263873386 kiwi +34-118",
            "AT Hill +0.263873386 kiwi +34-118 1.5 x",
            "AT Hill +0.263873386 kiwi +95-118 1.5",
            "AT Hill +0.263873386 kiwi +34-118 -1",
            "AT  Hill +0.263873386 kiwi +34-118 1",
            "XX Hill +0.263873386 kiwi +34-118 1",
            "AT Hill +0.263873386 ki\twi +34-118 1",
            "AT Hill -0.000000000 kiwi +34-118 1",
            "AT Hill +00.000000001 kiwi +34-118 1",
            "AT Hi\x7fll +0.000000001 kiwi +34-118 1",
        ] {
            assert!(parse_at_line(bad.as_bytes()).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn invalid_reply_is_the_line_as_received() {
        let mut out = Vec::new();
        invalid_reply(b"WHATSAT kiwi.cs.ucla.edu 51 5", &mut out);
        assert_eq!(out, b"? WHATSAT kiwi.cs.ucla.edu 51 5\n");
        out.clear();
        invalid_reply(b"  \xff\t bad\r", &mut out);
        assert_eq!(out, b"?   \xff\t bad\r\n");
    }

    #[test]
    fn whatsat_reply_collapses_newlines_and_ends_with_a_blank_line() {
        let mut out = Vec::new();
        whatsat_reply(
            b"AT Hill +0.1 k +1+1 1",
            "{\n\n\n   \"a\" : 1\n}\n\n\n",
            &mut out,
        );
        assert_eq!(out, b"AT Hill +0.1 k +1+1 1\n{\n   \"a\" : 1\n}\n\n");
    }

    /// The location parser as it was before it took each coordinate in one
    /// pass: split at the signs, then check and convert each part.
    fn reference_location(text: &[u8]) -> Option<Location> {
        fn split_coordinate(text: &[u8]) -> Option<(&[u8], &[u8])> {
            let (&sign, body) = text.split_first()?;
            if sign != b'+' && sign != b'-' {
                return None;
            }
            let end = body
                .iter()
                .position(|&b| b == b'+' || b == b'-')
                .map_or(text.len(), |i| i + 1);
            Some(text.split_at(end))
        }
        fn coordinate(text: &[u8], limit: u64) -> Option<f64> {
            let (whole, fraction) = split_decimal(&text[1..])?;
            let whole_value = parse_digits_u64(whole)?;
            let fraction_is_zero = fraction.is_none_or(|f| f.iter().all(|&b| b == b'0'));
            if whole_value > limit || (whole_value == limit && !fraction_is_zero) {
                return None;
            }
            let value: f64 = std::str::from_utf8(&text[1..]).ok()?.parse().ok()?;
            Some(if text[0] == b'-' { -value } else { value })
        }
        let (lat_text, rest) = split_coordinate(text)?;
        let (lng_text, rest) = split_coordinate(rest)?;
        if !rest.is_empty() {
            return None;
        }
        Some(Location {
            lat: coordinate(lat_text, 90)?,
            lng: coordinate(lng_text, 180)?,
        })
    }

    proptest! {
        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_request(&bytes);
            let _ = parse_at_line(&bytes);
        }

        #[test]
        fn parser_never_panics_on_near_valid_lines(
            verb in prop::sample::select(vec!["IAMAT", "WHATSAT", "AT"]),
            rest in "[ +\\-.0-9a-z\\t]{0,40}",
        ) {
            let line = format!("{verb} {rest}");
            let _ = parse_request(line.as_bytes());
            let _ = parse_at_line(line.as_bytes());
        }

        #[test]
        fn location_round_trips(lat in -90_000_000i64..=90_000_000, lng in -180_000_000i64..=180_000_000) {
            let text = format!("{}{}.{:06}{}{}.{:06}",
                if lat < 0 { '-' } else { '+' }, lat.abs() / 1_000_000, lat.abs() % 1_000_000,
                if lng < 0 { '-' } else { '+' }, lng.abs() / 1_000_000, lng.abs() % 1_000_000);
            let location = Location::parse(text.as_bytes()).expect("in range");
            prop_assert!((location.lat - lat as f64 / 1e6).abs() < 1e-9);
            prop_assert!((location.lng - lng as f64 / 1e6).abs() < 1e-9);
        }

        #[test]
        fn locations_parse_as_the_plain_two_pass_parser_does(
            text in "[+-]?[0-9]{0,4}(\\.[0-9]{0,18})?[+-.x]?[0-9]{0,4}(\\.[0-9]{0,18})?[+-.x0-9]{0,2}",
            junk in "[0-9+.x-]{0,16}",
        ) {
            for text in [text.as_bytes(), junk.as_bytes()] {
                let bits = |l: Location| (l.lat.to_bits(), l.lng.to_bits());
                prop_assert_eq!(
                    Location::parse(text).map(bits),
                    reference_location(text).map(bits),
                    "{}",
                    String::from_utf8_lossy(text)
                );
            }
        }

        #[test]
        fn coordinates_are_the_nearest_double(whole in 0u64..=90, fraction in "[0-9]{0,20}", negative: bool) {
            let sign = if negative { '-' } else { '+' };
            let text = if fraction.is_empty() {
                format!("{sign}{whole}")
            } else {
                format!("{sign}{whole}.{fraction}")
            };
            let expected: f64 = text.parse().unwrap();
            let parsed = coordinate(text.as_bytes(), 90);
            if whole == 90 && fraction.bytes().any(|b| b != b'0') {
                prop_assert_eq!(parsed, None);
            } else {
                prop_assert_eq!(parsed.map(f64::to_bits), Some(expected.to_bits()), "{}", text);
            }
        }

        #[test]
        fn iamat_reply_round_trips(client in "[!-~]{1,20}", secs in 0u64..4_000_000_000, nanos in 0u32..1_000_000_000,
                                   lat in -90i32..=90, lng in -180i32..=180) {
            let line = format!("IAMAT {client} {lat:+}{lng:+} {secs}.{nanos:09}");
            let Ok(Request::Iamat(iamat)) = parse_request(line.as_bytes()) else {
                return Err(TestCaseError::fail(format!("valid: {line}")));
            };
            let at = format_at("Hill", 0, &iamat);
            // Written after a reply already in the buffer, the same line,
            // where it says, and nothing else touched.
            let mut out = b"AT earlier\n".to_vec();
            let range = write_at("Hill", 0, &iamat, &mut out);
            prop_assert_eq!(&out[range.clone()], &at[..]);
            prop_assert_eq!((&out[..range.start], range.end), (&b"AT earlier\n"[..], out.len()));
            let back = parse_at_line(&at).expect("our own AT line parses");
            prop_assert_eq!(back.client_id, client.as_bytes());
            prop_assert_eq!(back.client_time, iamat.client_time);
        }
    }
}
