//! Google Places Nearby Search (legacy): `GET
//! BASE/maps/api/place/nearbysearch/json?location=LAT,LNG&radius=METRES&key=KEY`.
//!
//! The answer is Google's own JSON, passed on whole (the server cuts
//! `results` to the bound and lays it out as Google does); errors come in
//! its `status` field. Wrap it in `resilient::Resilient` for timeouts,
//! retries, caching and the rest.

use async_trait::async_trait;
use serde_json::Value;

use super::NearbyQuery;
use super::answer::Answer;
use super::remote::{self, Upstream, UpstreamError};

/// Where the legacy API lives.
pub const DEFAULT_BASE_URL: &str = "https://maps.googleapis.com";

/// The Nearby Search path under the base URL.
const PATH: &str = "/maps/api/place/nearbysearch/json";

/// The legacy Nearby Search API.
pub struct GoogleLegacy {
    client: reqwest::Client,
    /// `base_url` + `PATH`.
    endpoint: String,
    /// Already percent-encoded for the query string.
    key: String,
}

impl GoogleLegacy {
    /// A provider asking `base_url` (e.g. `https://maps.googleapis.com`, or
    /// a proxy's URL with a path prefix) with API key `key`.
    pub fn new(client: reqwest::Client, base_url: &str, key: &str) -> Self {
        Self {
            client,
            endpoint: format!("{}{PATH}", base_url.trim_end_matches('/')),
            key: remote::percent_encode(key),
        }
    }
}

#[async_trait]
impl Upstream for GoogleLegacy {
    fn name(&self) -> &'static str {
        "google"
    }

    /// The request's own parameters: the location as sent (Rust's shortest
    /// round-trip text of each coordinate) and the radius text. The bound is
    /// not sent; every answer holds up to 20 results.
    fn key(&self, query: &NearbyQuery) -> String {
        format!("{},{}|{}", query.lat, query.lng, query.radius_m_text)
    }

    async fn fetch(&self, query: &NearbyQuery) -> Result<Answer, UpstreamError> {
        // `{}` of an f64 never uses an exponent, and the radius text is
        // digits and a point: nothing here needs encoding but the key.
        let url = format!(
            "{}?location={},{}&radius={}&key={}",
            self.endpoint, query.lat, query.lng, query.radius_m_text, self.key
        );
        let request = self
            .client
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json");
        let (code, body) = remote::send(request).await?;
        parse_answer(code, &body)
    }
}

/// Google's answer to one request: the JSON when its status is `OK` or
/// `ZERO_RESULTS`, else the error it reports.
pub fn parse_answer(code: u16, body: &[u8]) -> Result<Answer, UpstreamError> {
    if !(200..300).contains(&code) {
        return Err(UpstreamError::http(code, remote::excerpt(body)));
    }
    let value = Answer::parse(body).map_err(|error| {
        UpstreamError::malformed(format!("answer is not a JSON object: {error}"))
    })?;
    let Some(status) = value.get("status").and_then(Value::as_str) else {
        return Err(UpstreamError::malformed("answer has no status"));
    };
    match status {
        "OK" | "ZERO_RESULTS" => {
            if !value.has_results() {
                return Err(UpstreamError::malformed("answer has no results array"));
            }
            Ok(value)
        }
        _ => {
            let message = value
                .get("error_message")
                .and_then(Value::as_str)
                .unwrap_or("no error_message");
            Err(UpstreamError::status(status, message))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ok_and_zero_results_pass_through_whole() {
        let body = br#"{"html_attributions":[],"next_page_token":"abc","results":[{"name":"A","extra":{"x":1}}],"status":"OK"}"#;
        let value = parse_answer(200, body).unwrap().to_value().unwrap();
        assert_eq!(value["next_page_token"], "abc");
        assert_eq!(value["results"][0]["extra"], json!({"x": 1}));
        let empty = br#"{"html_attributions":[],"results":[],"status":"ZERO_RESULTS"}"#;
        assert_eq!(
            parse_answer(200, empty).unwrap().to_value().unwrap()["status"],
            "ZERO_RESULTS"
        );
    }

    #[test]
    fn error_statuses_become_errors() {
        for (status, transient) in [
            ("OVER_QUERY_LIMIT", true),
            ("UNKNOWN_ERROR", true),
            ("REQUEST_DENIED", false),
            ("INVALID_REQUEST", false),
        ] {
            let body = format!(
                r#"{{"error_message":"m","html_attributions":[],"results":[],"status":"{status}"}}"#
            );
            let error = parse_answer(200, body.as_bytes()).unwrap_err();
            assert_eq!(error.status, status);
            assert_eq!(error.transient, transient, "{status}");
        }
    }

    #[test]
    fn nonsense_is_an_unknown_error() {
        for body in [&b"not json"[..], b"{}", br#"{"status":"OK"}"#, b"[1,2]"] {
            let error = parse_answer(200, body).unwrap_err();
            assert_eq!(error.status, "UNKNOWN_ERROR");
            assert!(!error.transient);
        }
        let error = parse_answer(503, b"busy").unwrap_err();
        assert_eq!(
            (error.status.as_str(), error.transient),
            ("UNKNOWN_ERROR", true)
        );
        assert!(error.detail.contains("503"), "{}", error.detail);
    }
}
