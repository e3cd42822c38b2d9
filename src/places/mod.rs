//! Places providers behind one trait, and the Google-shaped answer text.
//!
//! Places data is never flooded between servers: each server asks its own
//! provider when a WHATSAT arrives.

use async_trait::async_trait;

pub mod geonames;
pub mod json;

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

/// A source of places.
#[async_trait]
pub trait Places: Send + Sync {
    /// Google-Places-shaped JSON (`html_attributions`, `results`, `status`)
    /// with at most `query.limit` results, nearest or most prominent first.
    async fn nearby(&self, query: &NearbyQuery) -> Result<serde_json::Value, PlacesError>;
}
