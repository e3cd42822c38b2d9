//! A WHATSAT answer's JSON as sent and as logged, and the cache of rendered
//! answers for providers whose answers never change.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde_json::{Value, json};
use tracing::warn;

use super::json::to_styled_string;
use super::{NearbyQuery, Places, PlacesError};
use crate::log::Show;
use crate::stats::Counter;

/// Rendered answers kept for providers whose answers are fixed.
const ANSWER_CACHE_ENTRIES: usize = 4096;

/// A WHATSAT answer's JSON, ready to send and to log.
pub struct RenderedPlaces {
    /// Google's layout, runs of newlines collapsed, no trailing newline.
    pub json: String,
    /// The same, escaped for a one-line log entry.
    pub logged: String,
    /// For an answer kept in the answer cache, its number in this run's log
    /// (from 1); 0 for an answer used once.
    pub number: u64,
    /// Whether the answer has been written to the log in full.
    logged_once: AtomicBool,
}

impl RenderedPlaces {
    fn new(value: &Value, number: u64) -> Self {
        let mut json = to_styled_string(value);
        while json.contains("\n\n") {
            json = json.replace("\n\n", "\n");
        }
        json.truncate(json.trim_end_matches('\n').len());
        let logged = Show(json.as_bytes()).to_string();
        Self {
            json,
            logged,
            number,
            logged_once: AtomicBool::new(false),
        }
    }

    /// True if the answer was logged in full before; marks it logged.
    pub fn logged_before(&self) -> bool {
        self.logged_once.swap(true, Ordering::Relaxed)
    }
}

/// A query, exactly: the location's bits, the radius text and the bound.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct AnswerKey {
    lat: u64,
    lng: u64,
    radius_m: String,
    limit: usize,
}

/// A provider with the answers it rendered, kept when its answers are
/// fixed.
pub struct Answers {
    places: Arc<dyn Places>,
    rendered: Mutex<HashMap<AnswerKey, Arc<RenderedPlaces>>>,
    /// How many answers have entered the cache (their log numbers).
    numbered: AtomicU64,
    /// Queries answered, and those answered from the rendered answers.
    queries: Counter,
    cache_hits: Counter,
}

impl Answers {
    pub fn new(places: Arc<dyn Places>) -> Self {
        Self {
            places,
            rendered: Mutex::default(),
            numbered: AtomicU64::new(0),
            queries: Counter::new(),
            cache_hits: Counter::new(),
        }
    }

    /// The provider's own counters, if it keeps them.
    pub fn provider_stats(&self) -> Option<&crate::stats::PlacesStats> {
        self.places.stats()
    }

    /// Queries answered so far, and how many of them from the rendered
    /// answers kept for a provider whose answers are fixed.
    pub fn counts(&self) -> (u64, u64) {
        (self.queries.get(), self.cache_hits.get())
    }

    /// The rendered answer to a query, from the cache when the provider's
    /// answers are fixed.
    pub async fn answer(&self, query: &NearbyQuery) -> Arc<RenderedPlaces> {
        let key = AnswerKey {
            lat: query.lat.to_bits(),
            lng: query.lng.to_bits(),
            radius_m: query.radius_m_text.clone(),
            limit: query.limit,
        };
        self.queries.bump();
        let cacheable = self.places.answers_are_fixed();
        if cacheable && let Some(json) = self.lock().get(&key) {
            self.cache_hits.bump();
            return json.clone();
        }
        let places = self.places.nearby(query).await;
        let number = if cacheable {
            self.numbered.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            0
        };
        let json = Arc::new(RenderedPlaces::new(&places_answer(places), number));
        if cacheable {
            let mut rendered = self.lock();
            // Bounded: start over when full rather than track recency.
            if rendered.len() >= ANSWER_CACHE_ENTRIES {
                rendered.clear();
            }
            rendered.insert(key, json.clone());
        }
        json
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AnswerKey, Arc<RenderedPlaces>>> {
        self.rendered
            .lock()
            .expect("answer cache lock is never poisoned")
    }
}

/// The JSON of a WHATSAT answer: the provider's (already bounded, see
/// [`Places::nearby`]), or an empty answer carrying the failure's status.
pub fn places_answer(places: Result<Value, PlacesError>) -> Value {
    match places {
        Ok(value) => value,
        Err(error) => {
            let status = match &error {
                PlacesError::Status(status) => status.as_str(),
                PlacesError::Unavailable(_) => "UNKNOWN_ERROR",
            };
            warn!(%error, "places provider failed");
            json!({ "html_attributions": [], "results": [], "status": status })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_providers_give_an_empty_answer_with_their_status() {
        let answer = places_answer(Err(PlacesError::Status("OVER_QUERY_LIMIT".into())));
        assert_eq!(
            answer,
            json!({"html_attributions": [], "results": [], "status": "OVER_QUERY_LIMIT"})
        );
        let answer = places_answer(Err(PlacesError::Unavailable("timed out".into())));
        assert_eq!(answer["status"], "UNKNOWN_ERROR");
    }

    #[tokio::test]
    async fn fixed_answers_are_rendered_once_and_numbered() {
        let answers = Answers::new(Arc::new(super::super::geonames::GeoNames::new()));
        let query = NearbyQuery {
            lat: 34.068930,
            lng: -118.445127,
            radius_m: 10_000.0,
            radius_m_text: "10000".into(),
            limit: 2,
        };
        let first = answers.answer(&query).await;
        let again = answers.answer(&query).await;
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(first.number, 1);
        assert!(!first.logged_before());
        assert!(again.logged_before());
        assert!(!first.json.contains("\n\n") && !first.json.ends_with('\n'));
        let wider = answers.answer(&NearbyQuery { limit: 3, ..query }).await;
        assert_eq!(wider.number, 2);
    }
}
