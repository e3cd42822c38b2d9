//! PLACEHOLDER (lead): stub so the crate compiles until the real provider lands.
use super::{NearbyQuery, Places, PlacesError};
use async_trait::async_trait;
#[derive(Default)]
pub struct GeoNames;
impl GeoNames {
    pub fn new() -> Self {
        GeoNames
    }
}
#[async_trait]
impl Places for GeoNames {
    async fn nearby(&self, _q: &NearbyQuery) -> Result<serde_json::Value, PlacesError> {
        Ok(serde_json::json!({"html_attributions": [], "results": [], "status": "ZERO_RESULTS"}))
    }
}
