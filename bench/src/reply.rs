//! What the load tool sends and how it checks what comes back (pure: no IO,
//! no clock). Framing finds where a reply ends in the bytes read so far;
//! the checks hold a reply against the fields that were sent (SPEC §3, §4).

use std::fmt::Write as _;

use serde::Deserialize;
use serde::de::IgnoredAny;

/// The kind of answer a request gets, which decides how it is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// One line: the AT line (or `? ...`).
    Iamat,
    /// The AT line, a newline, JSON text and `\n\n`; or one `? ...` line.
    Whatsat,
}

/// Finds the end of the first complete reply in `buf`.
///
/// Returns the length of the reply including its terminator. `scanned` is
/// how far an earlier call got without finding the end, so that a long
/// WHATSAT answer arriving in pieces is not rescanned from its start; it is
/// reset to 0 when a reply is found.
pub fn reply_end(buf: &[u8], kind: Kind, scanned: &mut usize) -> Option<usize> {
    let single_line = kind == Kind::Iamat || buf.starts_with(b"?");
    if single_line {
        let from = (*scanned).min(buf.len());
        return match memchr::memchr(b'\n', &buf[from..]) {
            Some(offset) => {
                *scanned = 0;
                Some(from + offset + 1)
            }
            None => {
                *scanned = buf.len();
                None
            }
        };
    }
    // The JSON never holds "\n\n" (SPEC §4 collapses runs of newlines), and
    // the AT line holds no newline, so the first "\n\n" ends the answer.
    // (memchr's searches take a vector register at a time: answers are
    // kilobytes, and the load tool must not be the bottleneck.)
    let from = (*scanned).min(buf.len()).saturating_sub(1);
    match memchr::memmem::find(&buf[from..], b"\n\n") {
        Some(offset) => {
            *scanned = 0;
            Some(from + offset + 2)
        }
        None => {
            // Keep the last byte unscanned: it may be the first half of "\n\n".
            *scanned = buf.len().max(1);
            None
        }
    }
}

/// A client time as whole seconds and nanoseconds since the epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClientTime {
    pub secs: u64,
    pub nanos: u32,
}

impl ClientTime {
    /// The time `nanos_since_epoch` nanoseconds after the epoch.
    pub fn from_nanos(nanos_since_epoch: u128) -> Self {
        let secs = u64::try_from(nanos_since_epoch / 1_000_000_000).unwrap_or(u64::MAX);
        let nanos = u32::try_from(nanos_since_epoch % 1_000_000_000)
            .expect("a remainder of division by 10^9 fits in u32");
        ClientTime { secs, nanos }
    }

    /// Appends the SPEC §3 text form with all nine fraction digits.
    pub fn write_to(self, out: &mut String) {
        // Written once per request the tool sends, so by hand rather than
        // through `write!`: the fraction always has nine digits.
        out.push_str(itoa::Buffer::new().format(self.secs));
        out.push('.');
        // 10^9 + nanos has ten digits, the last nine the padded fraction
        // (and stays below u32::MAX: nanos < 10^9).
        let mut fraction = itoa::Buffer::new();
        out.push_str(&fraction.format(1_000_000_000 + self.nanos.min(999_999_999))[1..]);
    }

    /// One nanosecond later.
    fn next_nanosecond(self) -> Self {
        if self.nanos < 999_999_999 {
            ClientTime {
                secs: self.secs,
                nanos: self.nanos + 1,
            }
        } else {
            ClientTime {
                secs: self.secs.saturating_add(1),
                nanos: 0,
            }
        }
    }

    /// The SPEC §3 text form with all nine fraction digits.
    pub fn text(self) -> String {
        let mut out = String::with_capacity(20);
        self.write_to(&mut out);
        out
    }
}

/// Hands out strictly increasing client times close to the wall clock.
#[derive(Debug, Default)]
pub struct Clock {
    last: ClientTime,
}

impl Clock {
    /// The next client time: `now_nanos` unless that is not after the last
    /// one given out, in which case one nanosecond after it.
    pub fn next(&mut self, now_nanos: u128) -> ClientTime {
        self.next_at(ClientTime::from_nanos(now_nanos))
    }

    /// `next`, with the wall clock already read: a batch of requests can
    /// share one reading (each still gets a time of its own).
    pub fn next_at(&mut self, now: ClientTime) -> ClientTime {
        self.last = if now > self.last {
            now
        } else {
            self.last.next_nanosecond()
        };
        self.last
    }
}

/// The fixed fields one connection sends in its IAMAT messages.
#[derive(Clone, Debug)]
pub struct Client {
    pub id: String,
    pub location: String,
}

impl Client {
    /// A client distinct per run and per connection, with a location that
    /// varies by connection (all within range, around UCLA).
    pub fn new(run: &str, index: usize) -> Self {
        // Whole thousandths of a degree, so the text is exact and short.
        let lat_milli = 34_000 + (index % 1000);
        let lng_milli = 118_000 + (index / 1000) % 1000;
        Client {
            id: format!("hb-{run}-{index}"),
            location: format!(
                "+{}.{:03}068-{}.{:03}445",
                lat_milli / 1000,
                lat_milli % 1000,
                lng_milli / 1000,
                lng_milli % 1000
            ),
        }
    }

    /// Makes `into` the `k`th further client of the same connection (its
    /// own id, the same location), reusing its buffers: a
    /// connection may report a million clients in turn, and keeping them
    /// all (or allocating each anew) would cost this tool more than the
    /// server it measures.
    pub fn name_another(&self, k: usize, into: &mut Client) {
        into.id.clear();
        into.id.push_str(&self.id);
        into.id.push('-');
        into.id.push_str(itoa::Buffer::new().format(k));
        into.location.clone_from(&self.location);
    }

    /// `<id> <location> <time>`: what an AT line about this client at
    /// `time` echoes.
    pub fn echo(&self, time: ClientTime) -> String {
        let mut echo = String::with_capacity(self.id.len() + self.location.len() + 22);
        echo.push_str(&self.id);
        echo.push(' ');
        echo.push_str(&self.location);
        echo.push(' ');
        time.write_to(&mut echo);
        echo
    }

    /// Appends `IAMAT <id> <location> <time>\n`.
    pub fn write_iamat(&self, time: ClientTime, out: &mut String) {
        out.push_str("IAMAT ");
        out.push_str(&self.id);
        out.push(' ');
        out.push_str(&self.location);
        out.push(' ');
        time.write_to(out);
        out.push('\n');
    }

    /// Appends `WHATSAT <id> <radius> <bound>\n`.
    pub fn write_whatsat(&self, radius_km: &str, bound: u32, out: &mut String) {
        writeln!(out, "WHATSAT {} {radius_km} {bound}", self.id)
            .expect("writing to a String cannot fail");
    }
}

/// The parts of a well-formed AT line.
#[derive(Debug, PartialEq, Eq)]
pub struct AtLine<'a> {
    pub server: &'a [u8],
    pub skew: &'a [u8],
    pub client_id: &'a [u8],
    pub location: &'a [u8],
    pub time: &'a [u8],
}

/// Splits `AT <server> <skew> <client> <location> <time>` (single spaces,
/// no line ending) and checks the skew's shape: a sign, an integer part
/// without leading zeros, a point and nine digits.
pub fn parse_at_line(line: &[u8]) -> Result<AtLine<'_>, &'static str> {
    let mut fields = line.split(|&b| b == b' ');
    if fields.next() != Some(b"AT".as_slice()) {
        return Err("does not start with \"AT \"");
    }
    let mut next = |what| match fields.next() {
        Some(field) if !field.is_empty() => Ok(field),
        _ => Err(what),
    };
    let at = AtLine {
        server: next("missing server")?,
        skew: next("missing skew")?,
        client_id: next("missing client id")?,
        location: next("missing location")?,
        time: next("missing client time")?,
    };
    if fields.next().is_some() {
        return Err("more than six fields (or not single spaces)");
    }
    if at.server.iter().any(u8::is_ascii_whitespace) {
        return Err("whitespace in the server name");
    }
    if !is_skew(at.skew) {
        return Err("malformed skew");
    }
    Ok(at)
}

fn is_skew(skew: &[u8]) -> bool {
    let Some((&sign, rest)) = skew.split_first() else {
        return false;
    };
    let Some(point) = rest.iter().position(|&b| b == b'.') else {
        return false;
    };
    let (whole, fraction) = (&rest[..point], &rest[point + 1..]);
    (sign == b'+' || sign == b'-')
        && !whole.is_empty()
        && whole.iter().all(u8::is_ascii_digit)
        && (whole.len() == 1 || whole[0] != b'0')
        && fraction.len() == 9
        && fraction.iter().all(u8::is_ascii_digit)
}

/// Checks an IAMAT reply line (without its `\n`) against what was sent.
pub fn check_iamat_reply(
    line: &[u8],
    client: &Client,
    time: ClientTime,
) -> Result<(), &'static str> {
    check_at_line(line, client.echo(time).as_bytes())
}

/// Checks an AT line (without its line ending) that must end with
/// `echoed`, the client's fields as sent (`<id> <location> <time>`, single
/// spaces): as strict as `parse_at_line` and a comparison of each field.
///
/// The load tool checks every reply, so the usual case costs one
/// comparison with the bytes it sent and a look at the two fields before
/// them; only a reply that fails is taken apart to say why.
pub fn check_at_line(line: &[u8], echoed: &[u8]) -> Result<(), &'static str> {
    let head = line
        .strip_prefix(b"AT ")
        .and_then(|rest| rest.strip_suffix(echoed))
        .and_then(|rest| rest.strip_suffix(b" "));
    if let Some(head) = head
        && let Some(space) = memchr::memchr(b' ', head)
    {
        let (server, skew) = (&head[..space], &head[space + 1..]);
        if !server.is_empty() && !server.iter().any(u8::is_ascii_whitespace) && is_skew(skew) {
            return Ok(());
        }
    }
    let at = parse_at_line(line)?;
    let mut sent = echoed.split(|&b| b == b' ');
    if sent.next() != Some(at.client_id) {
        return Err("client id not echoed");
    }
    if sent.next() != Some(at.location) {
        return Err("location not echoed");
    }
    if sent.next() != Some(at.time) {
        return Err("client time not echoed");
    }
    Err("not the AT line expected")
}

/// The parts of the places JSON this tool checks; the rest is skipped.
#[derive(Deserialize)]
struct PlacesAnswer {
    results: Vec<IgnoredAny>,
    status: String,
}

/// The places JSON a connection checked last, and the status it carried.
///
/// A server asked the same question again and again answers with the same
/// JSON; comparing the bytes with JSON already checked (against the same
/// bound) is a full check of the new answer at a fraction of the cost of
/// parsing it again, which keeps the load tool from becoming the bottleneck.
#[derive(Default)]
pub struct CheckedJson {
    json: Vec<u8>,
    status: String,
}

/// Checks a whole WHATSAT answer (with its final `\n\n`) for a client that
/// was seeded with `seeded` at this herd. Returns the places status.
pub fn check_whatsat_answer(
    answer: &[u8],
    client: &Client,
    seeded: ClientTime,
    bound: u32,
) -> Result<String, &'static str> {
    let echoed = client.echo(seeded);
    check_whatsat_answer_with(
        answer,
        echoed.as_bytes(),
        bound,
        &mut CheckedJson::default(),
    )
}

/// `check_whatsat_answer` for an AT line that must echo `echoed` (see
/// `check_at_line`), parsing the JSON only when it differs from the one
/// `checked` holds (checked against the same `bound`); a JSON that passes
/// is kept there.
pub fn check_whatsat_answer_with(
    answer: &[u8],
    echoed: &[u8],
    bound: u32,
    checked: &mut CheckedJson,
) -> Result<String, &'static str> {
    let body = answer
        .strip_suffix(b"\n\n")
        .ok_or("does not end with \"\\n\\n\"")?;
    let newline = body
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no JSON after the AT line")?;
    check_at_line(&body[..newline], echoed)?;
    let json = &body[newline + 1..];
    if json.ends_with(b"\n") {
        return Err("trailing newline in the JSON");
    }
    if !checked.json.is_empty() && checked.json == json {
        return Ok(checked.status.clone());
    }
    let places: PlacesAnswer =
        serde_json::from_slice(json).map_err(|_| "JSON does not parse or lacks results/status")?;
    if places.results.len() > usize::try_from(bound).unwrap_or(usize::MAX) {
        return Err("more results than the bound");
    }
    checked.json.clear();
    checked.json.extend_from_slice(json);
    checked.status.clone_from(&places.status);
    Ok(places.status)
}

/// The client time field of the AT line that starts a WHATSAT answer, if
/// the answer is an AT answer for `client_id` (not a `? ...` line).
pub fn answer_time<'a>(answer: &'a [u8], client_id: &[u8]) -> Option<&'a [u8]> {
    let line_end = answer.iter().position(|&b| b == b'\n')?;
    let at = parse_at_line(&answer[..line_end]).ok()?;
    (at.client_id == client_id).then_some(at.time)
}

/// Up to 200 bytes of a reply, as readable text for a report.
pub fn sample(reply: &[u8]) -> String {
    let cut = &reply[..reply.len().min(200)];
    let mut text = String::from_utf8_lossy(cut).escape_debug().to_string();
    if reply.len() > cut.len() {
        text.push_str("...");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Client {
        Client {
            id: "kiwi".into(),
            location: "+34.068930-118.445127".into(),
        }
    }

    const TIME: ClientTime = ClientTime {
        secs: 1621464827,
        nanos: 959498503,
    };

    fn echo() -> &'static [u8] {
        b"kiwi +34.068930-118.445127 1621464827.959498503"
    }

    #[track_caller]
    fn iamat(line: &str, valid: bool) {
        assert_eq!(
            check_iamat_reply(line.as_bytes(), &client(), TIME).is_ok(),
            valid,
            "{line:?}"
        );
    }

    #[test]
    fn iamat_reply_must_echo_fields() {
        iamat(
            "AT Hill +0.263873386 kiwi +34.068930-118.445127 1621464827.959498503",
            true,
        );
        iamat(
            "AT Hill -12.000000000 kiwi +34.068930-118.445127 1621464827.959498503",
            true,
        );
        iamat(
            "AT Hill +0.26387338 kiwi +34.068930-118.445127 1621464827.959498503",
            false,
        );
        iamat(
            "AT Hill +00.263873386 kiwi +34.068930-118.445127 1621464827.959498503",
            false,
        );
        iamat(
            "AT Hill 0.263873386 kiwi +34.068930-118.445127 1621464827.959498503",
            false,
        );
        iamat(
            "AT Hill +0.263873386 kiwi +34.06893-118.445127 1621464827.959498503",
            false,
        );
        iamat(
            "AT Hill +0.263873386 kiwi +34.068930-118.445127 1621464827.9594985030",
            false,
        );
        iamat(
            "AT Hill +0.263873386 kiwi +34.068930-118.445127 1621464827.959498503\r",
            false,
        );
        iamat(
            "AT Hill  +0.263873386 kiwi +34.068930-118.445127 1621464827.959498503",
            false,
        );
        iamat(
            "? IAMAT kiwi +34.068930-118.445127 1621464827.959498503",
            false,
        );
        iamat(
            "AT Hi\tll +0.263873386 kiwi +34.068930-118.445127 1621464827.959498503",
            false,
        );
        iamat(
            "AT +0.263873386 kiwi +34.068930-118.445127 1621464827.959498503",
            false,
        );
        iamat(
            "AT Hill +0.263873386 kiwi +34.068930-118.445127 1621464827.959498503 x",
            false,
        );
        iamat(
            "AT Hill +0.263873386 x kiwi +34.068930-118.445127 1621464827.959498503",
            false,
        );
    }

    #[test]
    fn a_reply_that_fails_says_which_field() {
        let check = |line: &str| check_at_line(line.as_bytes(), echo());
        assert_eq!(
            check("AT Hill +0.1 kiwi +34.068930-118.445127 1621464827.959498503"),
            Err("malformed skew")
        );
        assert_eq!(
            check("AT Hill +0.100000000 lime +34.068930-118.445127 1621464827.959498503"),
            Err("client id not echoed")
        );
        assert_eq!(
            check("AT Hill +0.100000000 kiwi +34.068930-118.445127 1621464827.959498504"),
            Err("client time not echoed")
        );
        assert_eq!(
            check("IAMAT kiwi +34.068930-118.445127 1621464827.959498503"),
            Err("does not start with \"AT \"")
        );
    }

    #[test]
    fn a_repeated_answer_is_checked_against_the_json_checked_before() {
        let at = "AT Hill +0.263873386 kiwi +34.068930-118.445127 1621464827.959498503";
        let ok = format!("{at}\n{{\n   \"results\" : [ 1 ],\n   \"status\" : \"OK\"\n}}\n\n");
        let mut checked = CheckedJson::default();
        for _ in 0..2 {
            assert_eq!(
                check_whatsat_answer_with(ok.as_bytes(), echo(), 1, &mut checked),
                Ok("OK".into())
            );
        }
        // Different JSON is parsed again, and still refused when wrong.
        let over = format!("{at}\n{{\"results\" : [1, 2], \"status\" : \"OK\"}}\n\n");
        assert!(check_whatsat_answer_with(over.as_bytes(), echo(), 1, &mut checked).is_err());
        let broken = format!("{at}\n{{\"results\" : [1], \"status\" : \n\n");
        assert!(check_whatsat_answer_with(broken.as_bytes(), echo(), 1, &mut checked).is_err());
        // The AT line is checked every time.
        let other = ok.replace("kiwi", "lime");
        assert!(check_whatsat_answer_with(other.as_bytes(), echo(), 1, &mut checked).is_err());
        assert_eq!(
            check_whatsat_answer_with(ok.as_bytes(), echo(), 1, &mut checked),
            Ok("OK".into())
        );
    }

    #[test]
    fn whatsat_answer_is_checked() {
        let at = "AT Hill +0.263873386 kiwi +34.068930-118.445127 1621464827.959498503";
        let ok = format!("{at}\n{{\n   \"results\" : [ 1, 2 ],\n   \"status\" : \"OK\"\n}}\n\n");
        assert_eq!(
            check_whatsat_answer(ok.as_bytes(), &client(), TIME, 2),
            Ok("OK".into())
        );
        assert!(check_whatsat_answer(ok.as_bytes(), &client(), TIME, 1).is_err());
        let no_status = format!("{at}\n{{\"results\" : []}}\n\n");
        assert!(check_whatsat_answer(no_status.as_bytes(), &client(), TIME, 2).is_err());
        let trailing = format!("{at}\n{{\"results\" : [], \"status\" : \"OK\"}}\n\n\n");
        assert!(check_whatsat_answer(trailing.as_bytes(), &client(), TIME, 2).is_err());
        assert_eq!(
            answer_time(ok.as_bytes(), b"kiwi"),
            Some(b"1621464827.959498503".as_slice())
        );
        assert_eq!(answer_time(b"? WHATSAT kiwi 1 1\n", b"kiwi"), None);
    }

    #[test]
    fn framing_finds_reply_ends() {
        let mut scanned = 0;
        assert_eq!(reply_end(b"AT a\nAT b", Kind::Iamat, &mut scanned), Some(5));
        assert_eq!(reply_end(b"AT b", Kind::Iamat, &mut scanned), None);
        assert_eq!(scanned, 4);
        assert_eq!(reply_end(b"AT b\n", Kind::Iamat, &mut scanned), Some(5));

        let answer = b"AT x\n{\n \"a\" : 1\n}\n\nAT y";
        let mut scanned = 0;
        for end in 1..answer.len() {
            if end < 19 {
                assert_eq!(
                    reply_end(&answer[..end], Kind::Whatsat, &mut scanned),
                    None,
                    "{end}"
                );
            }
        }
        let mut scanned = 0;
        assert_eq!(reply_end(&answer[..18], Kind::Whatsat, &mut scanned), None);
        assert_eq!(reply_end(answer, Kind::Whatsat, &mut scanned), Some(19));
        let mut scanned = 0;
        assert_eq!(
            reply_end(b"? WHATSAT a 1 1\nAT", Kind::Whatsat, &mut scanned),
            Some(16)
        );
    }

    #[test]
    fn clock_is_strictly_increasing() {
        let mut clock = Clock::default();
        let a = clock.next(5_000_000_001);
        let b = clock.next(5_000_000_001);
        let c = clock.next(4_000_000_000);
        assert!(a < b && b < c);
        assert_eq!(a.text(), "5.000000001");
        assert_eq!(c.text(), "5.000000003");
        // Across a whole second.
        let d = clock.next(5_999_999_999);
        let e = clock.next(5_000_000_000);
        assert_eq!(
            (d.text(), e.text()),
            ("5.999999999".into(), "6.000000000".into())
        );
        assert_eq!(clock.next(0).text(), "6.000000001");
    }

    #[test]
    fn client_times_are_written_with_nine_fraction_digits() {
        let text = |nanos: u128| ClientTime::from_nanos(nanos).text();
        assert_eq!(text(0), "0.000000000");
        assert_eq!(text(1_000_000_000), "1.000000000");
        assert_eq!(text(1_796_233_730_559_411_378), "1796233730.559411378");
        assert_eq!(text(1_796_233_730_000_000_010), "1796233730.000000010");
        assert_eq!(text(999_999_999), "0.999999999");
    }

    #[test]
    fn client_locations_are_in_range_and_distinct() {
        let a = Client::new("r", 0);
        let b = Client::new("r", 1999);
        assert_eq!(a.location, "+34.000068-118.000445");
        assert_eq!(b.location, "+34.999068-118.001445");
        assert_ne!(a.id, b.id);
        // Further clients of a connection: ids of their own, same place.
        let (mut a1, mut a2) = (b.clone(), b.clone());
        a.name_another(1, &mut a1);
        a.name_another(2, &mut a2);
        assert_eq!(
            (a1.location.as_str(), a2.location.as_str()),
            (a.location.as_str(), a.location.as_str())
        );
        assert!(a1.id != a.id && a2.id != a1.id && a1.id != b.id);
    }
}
