//! What the remote providers (Google's two APIs) share: the HTTP client, the
//! error type that tells transient failures from final ones, and the
//! mapping of HTTP errors onto Google's legacy statuses.
//!
//! Retrying, caching, coalescing and the circuit breaker are `resilient`'s;
//! a provider here makes exactly one request per call.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::answer::Answer;
use super::{NearbyQuery, PlacesError};

/// The most bytes of an answer a provider reads; Google's answers are tens
/// of kilobytes.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// A remote places API, asked once per call.
#[async_trait]
pub trait Upstream: Send + Sync + 'static {
    /// A short name for logs, e.g. `google`.
    fn name(&self) -> &'static str;

    /// What identifies the answer to `query`: two queries with the same key
    /// get the same answer from the provider, so one may stand for the
    /// other in the cache and when coalescing.
    fn key(&self, query: &NearbyQuery) -> String;

    /// One request. On success, the whole Google-legacy-shaped answer with
    /// status `OK` or `ZERO_RESULTS` and every result the provider gave (at
    /// most 20): the caller cuts it to each query's bound.
    async fn fetch(&self, query: &NearbyQuery) -> Result<Answer, UpstreamError>;
}

/// Why a request failed, and whether trying again may help.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamError {
    /// The legacy status to answer with: `OVER_QUERY_LIMIT`,
    /// `REQUEST_DENIED`, `INVALID_REQUEST`, `UNKNOWN_ERROR`, ...
    pub status: String,
    /// Whether the same request may succeed later: connection errors,
    /// timeouts, 5xx, `OVER_QUERY_LIMIT` and `UNKNOWN_ERROR`.
    pub transient: bool,
    /// What happened, for the log. Never holds the API key.
    pub detail: String,
}

impl UpstreamError {
    /// A failure to get any answer (connection refused, reset, timed out).
    pub fn unreachable(detail: impl Into<String>) -> Self {
        Self {
            status: "UNKNOWN_ERROR".into(),
            transient: true,
            detail: detail.into(),
        }
    }

    /// An answer that is not what the API promises (bad JSON, no status).
    /// Not retried: the same request would most likely get the same.
    pub fn malformed(detail: impl Into<String>) -> Self {
        Self {
            status: "UNKNOWN_ERROR".into(),
            transient: false,
            detail: detail.into(),
        }
    }

    /// An error status in a legacy answer (`status` other than OK and
    /// ZERO_RESULTS). Google documents OVER_QUERY_LIMIT and UNKNOWN_ERROR
    /// as worth retrying.
    pub fn status(status: &str, detail: impl Into<String>) -> Self {
        // The status is copied into the answer: keep it to what a status
        // can look like.
        let plausible = !status.is_empty()
            && status.len() <= 64
            && status.bytes().all(|b| b.is_ascii_uppercase() || b == b'_');
        let status = if plausible { status } else { "UNKNOWN_ERROR" };
        Self {
            status: status.to_owned(),
            transient: matches!(status, "OVER_QUERY_LIMIT" | "UNKNOWN_ERROR"),
            detail: detail.into(),
        }
    }

    /// An HTTP error answer, as a legacy status.
    pub fn http(code: u16, detail: impl Into<String>) -> Self {
        let (status, transient) = legacy_status_of_http(code);
        Self {
            status: status.to_owned(),
            transient,
            detail: format!("HTTP {code}: {}", detail.into()),
        }
    }

    /// The error as the server sees it: an error status, or `Unavailable`
    /// (answered `UNKNOWN_ERROR`) when there was no answer at all.
    pub fn to_places_error(&self) -> PlacesError {
        if self.status == "UNKNOWN_ERROR" {
            PlacesError::Unavailable(self.detail.clone())
        } else {
            PlacesError::Status(self.status.clone())
        }
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.status, self.detail)
    }
}

/// The legacy status for an HTTP error code, and whether it is transient.
/// The Places API (New) reports every error this way; the legacy API only
/// when something in front of it fails.
pub fn legacy_status_of_http(code: u16) -> (&'static str, bool) {
    match code {
        429 => ("OVER_QUERY_LIMIT", true),
        401 | 403 => ("REQUEST_DENIED", false),
        400..=499 => ("INVALID_REQUEST", false),
        _ => ("UNKNOWN_ERROR", code >= 500),
    }
}

/// The HTTP client every remote provider of a server shares: one
/// connection pool with keep-alive, TLS by rustls (with the `ring` crypto
/// provider) trusting the Mozilla roots that `webpki-roots` carries, so it
/// works the same on any machine and needs no system certificate store.
pub fn http_client(max_idle_per_host: usize) -> Result<reqwest::Client, String> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|error| format!("setting up TLS: {error}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .user_agent(concat!("herd/", env!("CARGO_PKG_VERSION")))
        .tcp_nodelay(true)
        .pool_max_idle_per_host(max_idle_per_host)
        .pool_idle_timeout(Duration::from_secs(60))
        // Google answers directly; a redirect would be a misconfigured
        // base_url, and following one could send the key elsewhere.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|error| format!("setting up the HTTP client: {}", describe(&error)))
}

/// A reqwest error as text, without its URL, which may hold the API key.
pub fn describe(error: &reqwest::Error) -> String {
    use std::error::Error as _;
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    // The sources say what actually happened (connection refused, ...).
    crate::log::with_causes(kind, error.source())
}

/// Sends `request` and reads its whole answer, at most `MAX_BODY_BYTES`.
/// Returns the HTTP status code and the body.
pub async fn send(request: reqwest::RequestBuilder) -> Result<(u16, Vec<u8>), UpstreamError> {
    let mut response = request
        .send()
        .await
        .map_err(|error| UpstreamError::unreachable(describe(&error)))?;
    let code = response.status().as_u16();
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| UpstreamError::unreachable(describe(&error)))?
    {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(UpstreamError::malformed(format!(
                "answer longer than {MAX_BODY_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((code, body))
}

/// `text` percent-encoded for a URL query value: everything but RFC 3986's
/// unreserved characters.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Up to 200 characters of an error body, for the log.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_errors_map_onto_legacy_statuses() {
        assert_eq!(legacy_status_of_http(429), ("OVER_QUERY_LIMIT", true));
        assert_eq!(legacy_status_of_http(403), ("REQUEST_DENIED", false));
        assert_eq!(legacy_status_of_http(401), ("REQUEST_DENIED", false));
        assert_eq!(legacy_status_of_http(400), ("INVALID_REQUEST", false));
        assert_eq!(legacy_status_of_http(404), ("INVALID_REQUEST", false));
        assert_eq!(legacy_status_of_http(500), ("UNKNOWN_ERROR", true));
        assert_eq!(legacy_status_of_http(503), ("UNKNOWN_ERROR", true));
        assert_eq!(legacy_status_of_http(302), ("UNKNOWN_ERROR", false));
    }

    #[test]
    fn statuses_say_whether_to_retry() {
        assert!(UpstreamError::status("OVER_QUERY_LIMIT", "").transient);
        assert!(UpstreamError::status("UNKNOWN_ERROR", "").transient);
        assert!(!UpstreamError::status("REQUEST_DENIED", "").transient);
        assert!(!UpstreamError::status("INVALID_REQUEST", "").transient);
        // Only status-like text is passed on.
        assert_eq!(
            UpstreamError::status("<b>oops</b>", "").status,
            "UNKNOWN_ERROR"
        );
        assert_eq!(
            UpstreamError::status("REQUEST_DENIED", "").to_places_error(),
            PlacesError::Status("REQUEST_DENIED".into())
        );
        assert!(matches!(
            UpstreamError::unreachable("refused").to_places_error(),
            PlacesError::Unavailable(_)
        ));
    }

    #[test]
    fn keys_are_percent_encoded() {
        assert_eq!(percent_encode("AIza-Sy_0.~"), "AIza-Sy_0.~");
        assert_eq!(percent_encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }

    #[test]
    fn the_client_builds_with_ring_and_webpki_roots() {
        http_client(8).expect("a client");
    }
}
