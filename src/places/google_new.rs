//! Google Places API (New) Nearby Search: `POST BASE/v1/places:searchNearby`
//! with the key in `X-Goog-Api-Key` and the fields wanted in
//! `X-Goog-FieldMask`, answered in the legacy API's shape.
//!
//! New Google Cloud projects can no longer enable the legacy API, so this is
//! how a user with a new key gets the answers SPEC §4 asks for. Each place
//! is mapped onto the legacy result's fields, and HTTP errors onto legacy
//! statuses. Only the fields that are mapped are asked for: the field mask
//! decides which SKU, and so what price, each request is billed at.

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::NearbyQuery;
use super::answer::Answer;
use super::remote::{self, Upstream, UpstreamError};

/// Where the new API lives.
pub const DEFAULT_BASE_URL: &str = "https://places.googleapis.com";

/// The Nearby Search path under the base URL.
const PATH: &str = "/v1/places:searchNearby";

/// Every request asks for the most results the API gives (and the bound
/// allows); each WHATSAT cuts its own. Google bills a request, not a result,
/// so one cached answer then serves every bound.
pub const MAX_RESULTS: usize = 20;

/// The fields of the "Nearby Search Pro" SKU that the legacy result has.
pub const PRO_FIELDS: &[&str] = &[
    "places.id",
    "places.displayName",
    "places.location",
    "places.viewport",
    "places.types",
    "places.shortFormattedAddress",
    "places.formattedAddress",
    "places.businessStatus",
    "places.plusCode",
    "places.iconMaskBaseUri",
    "places.iconBackgroundColor",
];

/// The "Nearby Search Enterprise" fields the legacy result has too; asking
/// for any of them bills the request at the Enterprise price.
pub const ENTERPRISE_FIELDS: &[&str] = &[
    "places.rating",
    "places.userRatingCount",
    "places.priceLevel",
    "places.currentOpeningHours",
];

pub use crate::config::FieldTier;

impl FieldTier {
    /// The `X-Goog-FieldMask` header's value.
    pub fn field_mask(self) -> String {
        let mut fields = PRO_FIELDS.to_vec();
        if self == FieldTier::Enterprise {
            fields.extend_from_slice(ENTERPRISE_FIELDS);
        }
        fields.join(",")
    }
}

/// The Places API (New) Nearby Search.
pub struct GoogleNew {
    client: reqwest::Client,
    /// `base_url` + `PATH`.
    endpoint: String,
    key: String,
    field_mask: String,
}

impl GoogleNew {
    /// A provider asking `base_url` with API key `key` for `tier`'s fields.
    pub fn new(client: reqwest::Client, base_url: &str, key: &str, tier: FieldTier) -> Self {
        Self {
            client,
            endpoint: format!("{}{PATH}", base_url.trim_end_matches('/')),
            key: key.to_owned(),
            field_mask: tier.field_mask(),
        }
    }
}

#[async_trait]
impl Upstream for GoogleNew {
    fn name(&self) -> &'static str {
        "google-new"
    }

    /// The request's own parameters: the centre and the radius as the
    /// numbers sent. The bound is not part of it (always 20 are asked for).
    fn key(&self, query: &NearbyQuery) -> String {
        format!("{},{}|{}", query.lat, query.lng, query.radius_m)
    }

    async fn fetch(&self, query: &NearbyQuery) -> Result<Answer, UpstreamError> {
        let request = self
            .client
            .post(&self.endpoint)
            .header("X-Goog-Api-Key", &self.key)
            .header("X-Goog-FieldMask", &self.field_mask)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "application/json")
            .body(request_body(query).to_string());
        let (code, body) = remote::send(request).await?;
        parse_answer(code, &body).map(Answer::from_value)
    }
}

/// The JSON body of a searchNearby request for `query`.
pub fn request_body(query: &NearbyQuery) -> Value {
    json!({
        "locationRestriction": {
            "circle": {
                "center": { "latitude": query.lat, "longitude": query.lng },
                "radius": query.radius_m,
            }
        },
        "maxResultCount": MAX_RESULTS,
    })
}

/// The new API's answer as a legacy answer, or the legacy status of its
/// error.
pub fn parse_answer(code: u16, body: &[u8]) -> Result<Value, UpstreamError> {
    if !(200..300).contains(&code) {
        // {"error": {"code": 403, "message": "...", "status": "PERMISSION_DENIED"}}
        let message = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|value| {
                let error = value.get("error")?;
                let message = error.get("message")?.as_str()?;
                let status = error.get("status").and_then(Value::as_str).unwrap_or("");
                Some(format!("{status} {message}"))
            })
            .unwrap_or_else(|| remote::excerpt(body));
        return Err(UpstreamError::http(code, message));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|error| UpstreamError::malformed(format!("answer is not JSON: {error}")))?;
    let Some(answer) = value.as_object() else {
        return Err(UpstreamError::malformed("answer is not a JSON object"));
    };
    // No places at all is answered `{}`.
    let places = match answer.get("places") {
        None => &[][..],
        Some(Value::Array(places)) => places.as_slice(),
        Some(_) => return Err(UpstreamError::malformed("places is not an array")),
    };
    let results: Vec<Value> = places.iter().map(legacy_result).collect();
    let status = if results.is_empty() {
        "ZERO_RESULTS"
    } else {
        "OK"
    };
    Ok(json!({ "html_attributions": [], "results": results, "status": status }))
}

/// One place of the new API as a result of the legacy one. Fields the
/// place lacks are left out, except those SPEC §4 requires of every result
/// (`name`, `place_id`, `geometry.location`, `vicinity`, `types`).
pub fn legacy_result(place: &Value) -> Value {
    let text = |value: Option<&Value>| value.and_then(Value::as_str).map(str::to_owned);
    let mut result = Map::new();
    let mut put = |key: &str, value: Option<Value>| {
        if let Some(value) = value {
            result.insert(key.to_owned(), value);
        }
    };

    let point = |value: Option<&Value>| {
        let value = value?;
        Some(json!({
            "lat": value.get("latitude")?.as_f64()?,
            "lng": value.get("longitude")?.as_f64()?,
        }))
    };
    let mut geometry = Map::new();
    geometry.insert(
        "location".into(),
        point(place.get("location")).unwrap_or_else(|| json!({ "lat": 0.0, "lng": 0.0 })),
    );
    if let Some(viewport) = place.get("viewport")
        && let (Some(northeast), Some(southwest)) =
            (point(viewport.get("high")), point(viewport.get("low")))
    {
        geometry.insert(
            "viewport".into(),
            json!({ "northeast": northeast, "southwest": southwest }),
        );
    }
    put("geometry", Some(Value::Object(geometry)));

    let id = text(place.get("id")).unwrap_or_default();
    put(
        "name",
        Some(Value::String(
            text(place.get("displayName").and_then(|name| name.get("text"))).unwrap_or_default(),
        )),
    );
    put(
        "vicinity",
        Some(Value::String(
            text(place.get("shortFormattedAddress"))
                .or_else(|| text(place.get("formattedAddress")))
                .unwrap_or_default(),
        )),
    );
    put(
        "types",
        Some(
            place
                .get("types")
                .filter(|types| types.is_array())
                .cloned()
                .unwrap_or_else(|| json!([])),
        ),
    );
    put("business_status", place.get("businessStatus").cloned());
    put(
        "icon_background_color",
        place.get("iconBackgroundColor").cloned(),
    );
    put("icon_mask_base_uri", place.get("iconMaskBaseUri").cloned());
    put(
        "opening_hours",
        place
            .get("currentOpeningHours")
            .and_then(|hours| hours.get("openNow"))
            .map(|open_now| json!({ "open_now": open_now })),
    );
    put(
        "plus_code",
        place.get("plusCode").map(|code| {
            let mut plus_code = Map::new();
            for (from, to) in [
                ("compoundCode", "compound_code"),
                ("globalCode", "global_code"),
            ] {
                if let Some(value) = code.get(from) {
                    plus_code.insert(to.into(), value.clone());
                }
            }
            Value::Object(plus_code)
        }),
    );
    put(
        "price_level",
        place
            .get("priceLevel")
            .and_then(Value::as_str)
            .and_then(price_level)
            .map(Value::from),
    );
    put("rating", place.get("rating").cloned());
    put("user_ratings_total", place.get("userRatingCount").cloned());
    // The legacy API's `reference` is the place id too, and its results
    // come from Google's own data.
    put("reference", Some(Value::String(id.clone())));
    put("scope", Some(Value::String("GOOGLE".into())));
    put("place_id", Some(Value::String(id)));
    Value::Object(result)
}

/// The legacy API's 0–4 price level.
fn price_level(level: &str) -> Option<u8> {
    Some(match level {
        "PRICE_LEVEL_FREE" => 0,
        "PRICE_LEVEL_INEXPENSIVE" => 1,
        "PRICE_LEVEL_MODERATE" => 2,
        "PRICE_LEVEL_EXPENSIVE" => 3,
        "PRICE_LEVEL_VERY_EXPENSIVE" => 4,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_place_maps_onto_every_legacy_field() {
        let place = json!({
            "id": "ChIJ123",
            "displayName": { "text": "Café <Kiasma>", "languageCode": "fi" },
            "location": { "latitude": 60.1718, "longitude": 24.9366 },
            "viewport": {
                "low": { "latitude": 60.17, "longitude": 24.93 },
                "high": { "latitude": 60.18, "longitude": 24.94 }
            },
            "types": ["cafe", "food", "point_of_interest", "establishment"],
            "shortFormattedAddress": "Mannerheiminaukio 2, Helsinki",
            "formattedAddress": "Mannerheiminaukio 2, 00100 Helsinki, Finland",
            "businessStatus": "OPERATIONAL",
            "plusCode": { "globalCode": "9GG65WCP+PM", "compoundCode": "5WCP+PM Helsinki" },
            "iconMaskBaseUri": "https://maps.gstatic.com/mapfiles/place_api/icons/v2/cafe_pinlet",
            "iconBackgroundColor": "#FF9E67",
            "rating": 4.4,
            "userRatingCount": 812,
            "priceLevel": "PRICE_LEVEL_MODERATE",
            "currentOpeningHours": { "openNow": true, "periods": [] }
        });
        assert_eq!(
            legacy_result(&place),
            json!({
                "business_status": "OPERATIONAL",
                "geometry": {
                    "location": { "lat": 60.1718, "lng": 24.9366 },
                    "viewport": {
                        "northeast": { "lat": 60.18, "lng": 24.94 },
                        "southwest": { "lat": 60.17, "lng": 24.93 }
                    }
                },
                "icon_background_color": "#FF9E67",
                "icon_mask_base_uri": "https://maps.gstatic.com/mapfiles/place_api/icons/v2/cafe_pinlet",
                "name": "Café <Kiasma>",
                "opening_hours": { "open_now": true },
                "place_id": "ChIJ123",
                "plus_code": { "compound_code": "5WCP+PM Helsinki", "global_code": "9GG65WCP+PM" },
                "price_level": 2,
                "rating": 4.4,
                "reference": "ChIJ123",
                "scope": "GOOGLE",
                "types": ["cafe", "food", "point_of_interest", "establishment"],
                "user_ratings_total": 812,
                "vicinity": "Mannerheiminaukio 2, Helsinki"
            })
        );
    }

    #[test]
    fn a_bare_place_still_has_the_required_fields() {
        let result = legacy_result(&json!({
            "id": "X",
            "location": { "latitude": 1.5, "longitude": 2.5 },
            "formattedAddress": "Somewhere 1, Town"
        }));
        assert_eq!(
            result,
            json!({
                "geometry": { "location": { "lat": 1.5, "lng": 2.5 } },
                "name": "",
                "place_id": "X",
                "reference": "X",
                "scope": "GOOGLE",
                "types": [],
                "vicinity": "Somewhere 1, Town"
            })
        );
    }

    #[test]
    fn answers_and_errors() {
        let answer = parse_answer(200, br#"{"places":[{"id":"A"},{"id":"B"}]}"#).unwrap();
        assert_eq!(answer["status"], "OK");
        assert_eq!(answer["results"][1]["place_id"], "B");
        assert_eq!(answer["html_attributions"], json!([]));
        assert_eq!(parse_answer(200, b"{}").unwrap()["status"], "ZERO_RESULTS");
        assert_eq!(
            parse_answer(200, br#"{"places":[]}"#).unwrap()["status"],
            "ZERO_RESULTS"
        );
        for (code, status, transient) in [
            (400, "INVALID_REQUEST", false),
            (403, "REQUEST_DENIED", false),
            (429, "OVER_QUERY_LIMIT", true),
            (500, "UNKNOWN_ERROR", true),
            (503, "UNKNOWN_ERROR", true),
        ] {
            let body =
                format!(r#"{{"error":{{"code":{code},"message":"nope","status":"WHATEVER"}}}}"#);
            let error = parse_answer(code, body.as_bytes()).unwrap_err();
            assert_eq!(
                (error.status.as_str(), error.transient),
                (status, transient)
            );
            assert!(error.detail.contains("WHATEVER nope"), "{}", error.detail);
        }
        for body in [&b"nope"[..], b"[]", br#"{"places":{}}"#] {
            assert_eq!(parse_answer(200, body).unwrap_err().status, "UNKNOWN_ERROR");
        }
    }

    #[test]
    fn the_request_asks_for_twenty_in_a_circle() {
        let query = NearbyQuery {
            lat: 60.17,
            lng: 24.94,
            radius_m: 1500.5,
            radius_m_text: "1500.5".into(),
            limit: 3,
        };
        assert_eq!(
            request_body(&query),
            json!({
                "locationRestriction": {
                    "circle": { "center": { "latitude": 60.17, "longitude": 24.94 }, "radius": 1500.5 }
                },
                "maxResultCount": 20
            })
        );
    }

    #[test]
    fn the_field_mask_asks_only_for_mapped_fields() {
        assert_eq!(
            FieldTier::Pro.field_mask(),
            "places.id,places.displayName,places.location,places.viewport,places.types,places.shortFormattedAddress,places.formattedAddress,places.businessStatus,places.plusCode,places.iconMaskBaseUri,places.iconBackgroundColor"
        );
        assert!(FieldTier::Enterprise.field_mask().ends_with(
            ",places.rating,places.userRatingCount,places.priceLevel,places.currentOpeningHours"
        ));
    }
}
