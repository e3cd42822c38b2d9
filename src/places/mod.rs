//! Places providers behind one trait, and the Google-shaped answer text.
//!
//! Places data is never flooded between servers: each server asks its own
//! provider when a WHATSAT arrives. The providers:
//!
//! - `geonames`: the embedded GeoNames towns, the zero-configuration default;
//! - `google`: Google's legacy Nearby Search;
//! - `google_new`: the Places API (New), answered in the legacy shape;
//! - `osm`: a database imported from OpenStreetMap (`osm_import`).
//!
//! Both Google providers are wrapped in `resilient::Resilient` (timeouts,
//! retries, a concurrency bound, a circuit breaker, coalescing, a cache and
//! counters); `from_config` builds whichever a server is configured with.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::config::{HerdConfig, PlacesConfig, RemotePlacesConfig};

pub mod answer;
pub mod geonames;
pub mod google;
pub mod google_new;
pub mod json;
mod kdtree_build;
pub mod osm;
pub mod osm_import;
pub mod remote;
pub mod render;
pub mod resilient;
pub mod sphere;

/// The environment variable holding the API key when the config has none.
pub const KEY_ENV: &str = "HERD_PLACES_KEY";
/// The environment variable holding the API base URL when the config has
/// none (as for the Python and Node baselines).
pub const URL_ENV: &str = "HERD_PLACES_URL";

/// What a WHATSAT asks a provider: places around a point.
#[derive(Clone, Debug, PartialEq)]
pub struct NearbyQuery {
    /// Latitude in degrees, in [-90, 90].
    pub lat: f64,
    /// Longitude in degrees, in [-180, 180].
    pub lng: f64,
    /// Radius in metres, in (0, 50 000].
    pub radius_m: f64,
    /// The same radius as exact decimal text (for providers that take it in a URL).
    pub radius_m_text: String,
    /// The most results to return, 1 to 20.
    pub limit: usize,
}

/// Why a provider gave no answer.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum PlacesError {
    /// The provider answered with a Google status other than OK/ZERO_RESULTS.
    #[error("provider status {0}")]
    Status(String),
    /// The provider could not be reached or answered nonsense.
    #[error("provider unavailable: {0}")]
    Unavailable(String),
}

/// A Nearby Search answer in Google's shape for offline `results`:
/// `ZERO_RESULTS` when there are none, else `OK`.
pub fn offline_answer(attribution: &str, results: Vec<serde_json::Value>) -> serde_json::Value {
    let status = if results.is_empty() {
        "ZERO_RESULTS"
    } else {
        "OK"
    };
    serde_json::json!({
        "html_attributions": [attribution],
        "results": results,
        "status": status,
    })
}

/// A source of places.
#[async_trait]
pub trait Places: Send + Sync {
    /// Google-Places-shaped JSON (`html_attributions`, `results`, `status`)
    /// with at most `query.limit` results, nearest or most prominent first.
    async fn nearby(&self, query: &NearbyQuery) -> Result<serde_json::Value, PlacesError>;

    /// Whether the answer to a query never changes while the server runs
    /// (offline data), so that the server may keep rendered answers.
    fn answers_are_fixed(&self) -> bool {
        false
    }

    /// The provider's own counters, for a provider that keeps them (the
    /// remote ones: calls, failures, its cache, its breaker).
    fn stats(&self) -> Option<&crate::stats::PlacesStats> {
        None
    }
}

/// Why a places provider could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("the places provider needs an API key: set `key` in [places] or ${KEY_ENV}")]
    NoKey,
    #[error("places base_url {url:?}: {reason}")]
    BaseUrl { url: String, reason: String },
    #[error("the places HTTP client: {0}")]
    Client(String),
    #[error("the places database: {0}")]
    Database(String),
}

/// The places provider of server `name` of `config`: the server's own
/// `[servers.places]`, else the herd's `[places]`.
pub fn from_config(config: &HerdConfig, name: &str) -> Result<Arc<dyn Places>, SetupError> {
    provider(config.places_for(name))
}

/// The provider a places config describes.
pub fn provider(places: &PlacesConfig) -> Result<Arc<dyn Places>, SetupError> {
    let env = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    Ok(match places {
        PlacesConfig::Geonames => Arc::new(geonames::GeoNames::new()),
        PlacesConfig::Google(remote) | PlacesConfig::GoogleNew(remote) => {
            let key = remote
                .key
                .clone()
                .or_else(|| env(KEY_ENV))
                .ok_or(SetupError::NoKey)?;
            let client = remote::http_client(remote.max_concurrent).map_err(SetupError::Client)?;
            let settings = resilient_settings(remote);
            if matches!(places, PlacesConfig::Google(_)) {
                let base_url = remote
                    .base_url
                    .clone()
                    .or_else(|| env(URL_ENV))
                    .unwrap_or_else(|| google::DEFAULT_BASE_URL.to_owned());
                check_base_url(&base_url)?;
                Arc::new(resilient::Resilient::new(
                    google::GoogleLegacy::new(client, &base_url, &key),
                    settings,
                ))
            } else {
                let base_url = remote
                    .base_url
                    .clone()
                    .or_else(|| env(URL_ENV))
                    .unwrap_or_else(|| google_new::DEFAULT_BASE_URL.to_owned());
                check_base_url(&base_url)?;
                Arc::new(resilient::Resilient::new(
                    google_new::GoogleNew::new(client, &base_url, &key, remote.fields),
                    settings,
                ))
            }
        }
        PlacesConfig::Osm(osm_config) => {
            Arc::new(osm::OsmPlaces::open(&osm_config.database).map_err(SetupError::Database)?)
        }
    })
}

/// The wrapper's settings from the config's numbers.
pub fn resilient_settings(remote: &RemotePlacesConfig) -> resilient::Settings {
    resilient::Settings {
        timeout: Duration::from_millis(remote.timeout_ms),
        max_attempts: remote.max_attempts,
        max_concurrent: remote.max_concurrent,
        cache_ttl: Duration::from_secs(remote.cache_ttl_secs),
        cache_max_entries: remote.cache_max_entries,
        breaker_failures: remote.breaker_failures,
        breaker_cooldown: Duration::from_millis(remote.breaker_cooldown_ms),
        stats_interval: Duration::from_secs(remote.stats_interval_secs),
    }
}

/// An http or https URL, so that a typo is found at start, not per query.
fn check_base_url(base_url: &str) -> Result<(), SetupError> {
    let wrong = |reason: String| SetupError::BaseUrl {
        url: base_url.to_owned(),
        reason,
    };
    let url = reqwest::Url::parse(base_url).map_err(|error| wrong(error.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") || url.query().is_some() {
        return Err(wrong("must be an http or https URL without a query".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const SERVERS: &str = "\n[[servers]]\nname = \"A\"\nclient = \"127.0.0.1:1\"\npeer = \"127.0.0.1:2\"\n\n[[servers]]\nname = \"B\"\nclient = \"127.0.0.1:3\"\npeer = \"127.0.0.1:4\"\n";

    fn parse(places: &str) -> Result<HerdConfig, crate::config::ConfigError> {
        HerdConfig::parse(
            &format!("{places}\n{SERVERS}"),
            "t.toml",
            Path::new("/etc/herd"),
        )
    }

    #[test]
    fn providers_are_chosen_in_the_config() {
        assert_eq!(parse("").unwrap().places, PlacesConfig::Geonames);
        let google =
            parse("[places]\nprovider = \"google\"\nkey = \"k\"\ntimeout_ms = 900").unwrap();
        let PlacesConfig::Google(remote) = &google.places else {
            panic!("{:?}", google.places)
        };
        assert_eq!(remote.key.as_deref(), Some("k"));
        assert_eq!(remote.timeout_ms, 900);
        assert_eq!(remote.cache_ttl_secs, 60, "defaults fill the rest");
        let new = parse("[places]\nprovider = \"google-new\"\nfields = \"enterprise\"").unwrap();
        assert!(matches!(
            &new.places,
            PlacesConfig::GoogleNew(remote) if remote.fields == google_new::FieldTier::Enterprise
        ));
        let osm = parse("[places]\nprovider = \"osm\"\ndatabase = \"helsinki.places\"").unwrap();
        assert_eq!(
            osm.places,
            PlacesConfig::Osm(crate::config::OsmPlacesConfig {
                database: "/etc/herd/helsinki.places".into()
            })
        );
        for bad in [
            "[places]\nprovider = \"google\"\nkee = \"k\"",
            "[places]\nprovider = \"osm\"",
            "[places]\nprovider = \"google\"\ntimeout_ms = 0",
            "[places]\nprovider = \"google-new\"\nfields = \"all\"",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_server_may_have_its_own_provider() {
        let text = SERVERS.replace(
            "peer = \"127.0.0.1:4\"\n",
            "peer = \"127.0.0.1:4\"\n\n[servers.places]\nprovider = \"osm\"\ndatabase = \"x.places\"\n",
        );
        let config = HerdConfig::parse(&text, "t.toml", Path::new("/srv")).unwrap();
        assert_eq!(config.places_for("A"), &PlacesConfig::Geonames);
        assert_eq!(
            config.places_for("B"),
            &PlacesConfig::Osm(crate::config::OsmPlacesConfig {
                database: "/srv/x.places".into()
            })
        );
        // And back through TOML (paths are absolute by now).
        let again = HerdConfig::parse(&config.to_toml(), "again", Path::new("/")).unwrap();
        assert_eq!(again.servers, config.servers);
        let google =
            parse("[places]\nprovider = \"google-new\"\nkey = \"k\"\nbase_url = \"http://x\"")
                .unwrap();
        let again = HerdConfig::parse(&google.to_toml(), "again", Path::new("/")).unwrap();
        assert_eq!(again.places, google.places);
    }

    #[test]
    fn the_key_is_not_in_debug_output() {
        let remote = RemotePlacesConfig {
            key: Some("sekrit-key".into()),
            ..RemotePlacesConfig::default()
        };
        let shown = format!("{:?}", PlacesConfig::GoogleNew(remote));
        assert!(!shown.contains("sekrit"), "{shown}");
        assert!(shown.contains("<hidden>"), "{shown}");
    }

    #[test]
    fn remote_providers_need_a_key_and_a_sane_url() {
        let remote = RemotePlacesConfig {
            key: Some("k".into()),
            base_url: Some("ftp://example.com".into()),
            ..RemotePlacesConfig::default()
        };
        assert!(provider(&PlacesConfig::Google(remote.clone())).is_err());
        let remote = RemotePlacesConfig {
            base_url: Some("http://127.0.0.1:9/prefix/".into()),
            ..remote
        };
        assert!(provider(&PlacesConfig::GoogleNew(remote)).is_ok());
    }
}
