//! `/history`: what `herd history --json` prints, over HTTP.
//!
//! `?client=ID[&since=T][&until=T][&limit=N]` lists a client's reports,
//! newest first; `?near=LAT,LNG&radius=KM[&since=…]` the reports within a
//! circle. Times are POSIX seconds, as in IAMAT.

use crate::config::HistoryConfig;
use crate::history::{self, BadQuery, HistoryError, Report, Subject, Window};

/// Reports listed when `limit` is not given, as `herd history` does.
const DEFAULT_LIMIT: usize = 100;
/// The most one answer lists: the answer is built in memory.
const MAX_LIMIT: usize = 10_000;

/// A `/history` query, checked.
#[derive(Debug)]
pub struct Request {
    of: Subject,
    window: Window,
    limit: usize,
}

impl Request {
    /// The request of a query string's parameters.
    pub fn parse(params: &[(String, String)]) -> Result<Request, BadQuery> {
        let mut client = None;
        let mut since = None;
        let mut until = None;
        let mut limit = None;
        let mut near = None;
        let mut radius = None;
        for (name, value) in params {
            let slot = match name.as_str() {
                "client" => &mut client,
                "since" => &mut since,
                "until" => &mut until,
                "limit" => &mut limit,
                "near" => &mut near,
                "radius" => &mut radius,
                _ => {
                    return Err(BadQuery(format!(
                        "unknown parameter {name:?}: /history takes client or near and radius, \
                         and since, until, limit"
                    )));
                }
            };
            if slot.replace(value.as_str()).is_some() {
                return Err(BadQuery(format!("{name} is given twice")));
            }
        }
        let window = history::parse_window(since, until)?;
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(text) => text
                .parse()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    BadQuery(format!(
                        "limit is a number from 1 to {MAX_LIMIT}, not {text:?}"
                    ))
                })?,
        };
        let of = match (client, near) {
            (Some(client), None) if !client.is_empty() => Subject::Client(client.into()),
            (None, Some(near)) => {
                let radius = radius
                    .map(|text| {
                        text.parse()
                            .map_err(|_| BadQuery(format!("radius is in kilometres, not {text:?}")))
                    })
                    .transpose()?;
                Subject::Near(history::parse_circle(near, radius)?)
            }
            (Some(_), Some(_)) => {
                return Err(BadQuery("give client or near, not both".into()));
            }
            _ => {
                return Err(BadQuery(
                    "give client=ID, or near=LAT,LNG and radius=KM".into(),
                ));
            }
        };
        if matches!(of, Subject::Client(_)) && radius.is_some() {
            return Err(BadQuery("radius goes with near".into()));
        }
        Ok(Request { of, window, limit })
    }

    /// Asks the database `config` names; blocks.
    pub fn run(self, config: &HistoryConfig) -> Result<Vec<Report>, HistoryError> {
        let mut database = history::open(config)?;
        self.of.reports(database.as_mut(), self.window, self.limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &[(&str, &str)]) -> Result<Request, BadQuery> {
        let params: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Request::parse(&params)
    }

    #[test]
    fn a_query_is_a_client_or_a_circle_and_bad_ones_say_why() {
        let request = parse(&[("client", "kiwi"), ("since", "100.5"), ("limit", "3")]).unwrap();
        assert!(matches!(request.of, Subject::Client(ref c) if c == b"kiwi"));
        assert_eq!(request.window.since, 100_500_000_000);
        assert_eq!(request.limit, 3);
        let near = parse(&[("near", "34.07,-118.44"), ("radius", "5")]).unwrap();
        assert!(matches!(near.of, Subject::Near(c) if c.radius_km == 5.0));
        assert_eq!(near.limit, DEFAULT_LIMIT);
        for (query, says) in [
            (&[][..], "give client=ID"),
            (&[("client", "a"), ("near", "1,1")][..], "not both"),
            (&[("client", "a"), ("limit", "0")][..], "limit is a number"),
            (
                &[("client", "a"), ("limit", "many")][..],
                "limit is a number",
            ),
            (
                &[("client", "a"), ("since", "yesterday")][..],
                "not a POSIX time",
            ),
            (
                &[("client", "a"), ("colour", "red")][..],
                "unknown parameter",
            ),
            (&[("client", "a"), ("client", "b")][..], "given twice"),
            (
                &[("client", "a"), ("radius", "3")][..],
                "radius goes with near",
            ),
            (&[("near", "1,1")][..], "needs a radius"),
            (&[("near", "91,1"), ("radius", "3")][..], "LAT,LNG"),
            (&[("near", "1,1"), ("radius", "far")][..], "kilometres"),
        ] {
            let error = parse(query).unwrap_err().to_string();
            assert!(error.contains(says), "{query:?}: {error}");
        }
    }
}
