//! A remote provider's answer as the server keeps it (in the cache, shared
//! by coalesced queries): its fields, with each result kept as JSON text
//! until a query first needs it.
//!
//! A legacy answer holds up to 20 results of some 60 values each, and a
//! query usually wants a few: building the whole tree of a 28 KB answer
//! took longer than anything else in a WHATSAT with the answer cache off
//! (~200 µs here, against ~45 µs to check the text and keep the results
//! as text, and ~8 µs per result later built).

use std::fmt;
use std::sync::OnceLock;

use serde::Deserialize as _;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// A legacy-shaped answer: an object with `results` (see the module).
#[derive(Debug)]
pub struct Answer {
    /// Every field but `results`, or every field if `results` is not an
    /// array.
    fields: Map<String, Value>,
    /// The `results` array, when there is one.
    results: Option<Vec<Lazy>>,
}

/// One result: its text, and the value built from it the first time it is
/// needed.
#[derive(Debug)]
struct Lazy {
    text: Option<Box<RawValue>>,
    value: OnceLock<Option<Value>>,
}

impl Lazy {
    fn built(value: Value) -> Self {
        Lazy {
            text: None,
            value: OnceLock::from(Some(value)),
        }
    }

    /// The result; `None` if its text, though JSON, is too deeply nested
    /// to be built (the text check has no depth limit).
    fn value(&self) -> Option<&Value> {
        self.value
            .get_or_init(|| {
                let text = self.text.as_ref()?;
                serde_json::from_str(text.get()).ok()
            })
            .as_ref()
    }
}

/// A result that could not be built (see [`Lazy::value`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unbuildable;

impl fmt::Display for Unbuildable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a result of the provider's answer is nested too deeply")
    }
}

impl Answer {
    /// Checks that `body` is one JSON object and keeps it as an answer.
    pub fn parse(body: &[u8]) -> Result<Self, serde_json::Error> {
        let mut deserializer = serde_json::Deserializer::from_slice(body);
        let answer = deserializer.deserialize_map(AnswerVisitor)?;
        deserializer.end()?;
        Ok(answer)
    }

    /// An answer built already (the Places API (New)'s, converted).
    pub fn from_value(value: Value) -> Self {
        let Value::Object(mut fields) = value else {
            let mut fields = Map::new();
            fields.insert("answer".into(), value);
            return Answer {
                fields,
                results: None,
            };
        };
        let results = match fields.remove("results") {
            Some(Value::Array(results)) => Some(results.into_iter().map(Lazy::built).collect()),
            Some(other) => {
                fields.insert("results".into(), other);
                None
            }
            None => None,
        };
        Answer { fields, results }
    }

    /// A field other than `results`.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields.get(name)
    }

    /// Whether the answer has a `results` array.
    pub fn has_results(&self) -> bool {
        self.results.is_some()
    }

    /// The answer as JSON with at most `limit` results (the first ones).
    pub fn cut(&self, limit: usize) -> Result<Value, Unbuildable> {
        let mut fields = self.fields.clone();
        if let Some(results) = &self.results {
            let kept = results
                .iter()
                .take(limit)
                .map(|result| result.value().cloned().ok_or(Unbuildable))
                .collect::<Result<Vec<_>, _>>()?;
            fields.insert("results".into(), Value::Array(kept));
        }
        Ok(Value::Object(fields))
    }

    /// The whole answer as JSON.
    pub fn to_value(&self) -> Result<Value, Unbuildable> {
        self.cut(usize::MAX)
    }
}

struct AnswerVisitor;

impl<'de> Visitor<'de> for AnswerVisitor {
    type Value = Answer;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Answer, A::Error> {
        let mut fields = Map::new();
        let mut results = None;
        while let Some(name) = map.next_key::<String>()? {
            if name == "results" {
                match map.next_value::<Results>()? {
                    Results::List(list) => results = Some(list),
                    Results::Other(value) => {
                        results = None;
                        fields.insert(name, value);
                    }
                }
            } else {
                // A later duplicate wins, as with a `Value`.
                fields.insert(name, map.next_value::<Value>()?);
            }
        }
        if results.is_some() {
            fields.remove("results");
        }
        Ok(Answer { fields, results })
    }
}

enum Results {
    List(Vec<Lazy>),
    /// Anything but an array, built (it is not the answer's bulk).
    Other(Value),
}

impl<'de> de::Deserialize<'de> for Results {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Results, D::Error> {
        deserializer.deserialize_any(ResultsVisitor)
    }
}

struct ResultsVisitor;

impl<'de> Visitor<'de> for ResultsVisitor {
    type Value = Results;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Results, A::Error> {
        let mut list = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(text) = seq.next_element::<Box<RawValue>>()? {
            list.push(Lazy {
                text: Some(text),
                value: OnceLock::new(),
            });
        }
        Ok(Results::List(list))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Results, A::Error> {
        let value = Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(Results::Other(value))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Results, E> {
        Ok(Results::Other(Value::Bool(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Results, E> {
        Ok(Results::Other(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Results, E> {
        Ok(Results::Other(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Results, E> {
        Ok(Results::Other(v.into()))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Results, E> {
        Ok(Results::Other(Value::String(v.to_owned())))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Results, E> {
        Ok(Results::Other(Value::Null))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer(results: usize) -> Value {
        let results: Vec<Value> = (0..results)
            .map(|i| json!({ "name": format!("P{i}"), "geometry": { "location": { "lat": i, "lng": -(i as i64) } }, "types": ["cafe", "food"] }))
            .collect();
        json!({ "html_attributions": ["x"], "next_page_token": "abc", "results": results, "status": "OK" })
    }

    #[test]
    fn an_answer_read_from_text_gives_back_the_same_json_cut_or_whole() {
        let value = answer(20);
        let parsed = Answer::parse(value.to_string().as_bytes()).expect("an answer");
        assert_eq!(parsed.to_value(), Ok(value.clone()));
        assert_eq!(parsed.get("status"), Some(&json!("OK")));
        assert!(parsed.has_results());
        for limit in [0, 1, 5, 20, 21] {
            let mut expected = value.clone();
            expected["results"].as_array_mut().unwrap().truncate(limit);
            assert_eq!(parsed.cut(limit), Ok(expected.clone()), "limit {limit}");
            // The same again, from the results built the first time.
            assert_eq!(parsed.cut(limit), Ok(expected));
        }
        // An answer built already behaves alike.
        let built = Answer::from_value(value.clone());
        assert_eq!(built.cut(3), parsed.cut(3));
        assert_eq!(built.to_value(), Ok(value));
    }

    #[test]
    fn results_that_are_not_an_array_stay_as_they_are() {
        for results in [
            json!({"a": [1, {"b": 2}]}),
            json!("none"),
            json!(null),
            json!(1.5),
            json!(true),
            json!(-3),
        ] {
            let value = json!({ "results": results, "status": "INVALID_REQUEST" });
            let parsed = Answer::parse(value.to_string().as_bytes()).expect("an answer");
            assert!(!parsed.has_results(), "{value}");
            assert_eq!(parsed.get("results"), Some(&results));
            assert_eq!(parsed.cut(1), Ok(value.clone()));
            assert!(!Answer::from_value(value.clone()).has_results());
        }
        // Only `results` is cut, whatever else is an array.
        let mut other = answer(4);
        other["more"] = json!([1, 2, 3, 4]);
        let parsed = Answer::parse(other.to_string().as_bytes()).expect("an answer");
        assert_eq!(parsed.cut(1).unwrap()["more"], json!([1, 2, 3, 4]));
        let bare = Answer::parse(br#"{"status":"REQUEST_DENIED"}"#).expect("an answer");
        assert!(!bare.has_results());
        assert_eq!(bare.cut(5), Ok(json!({ "status": "REQUEST_DENIED" })));
    }

    #[test]
    fn what_is_not_one_json_object_is_refused() {
        for body in [
            &b"[1, 2]"[..],
            b"\"OK\"",
            b"{\"results\": [1, 2}",
            b"{} {}",
            b"",
            b"{\"a\": 1,}",
        ] {
            assert!(
                Answer::parse(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // A result's text is checked even though it is not built.
        assert!(Answer::parse(br#"{"results": [{"name": "A"}, {"name": }]}"#).is_err());
    }

    #[test]
    fn a_result_nested_too_deeply_to_build_fails_the_cut_that_needs_it() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let body = format!(r#"{{"results": [{{"name": "A"}}, {deep}], "status": "OK"}}"#);
        let parsed = Answer::parse(body.as_bytes()).expect("the text is JSON");
        assert_eq!(
            parsed.cut(1),
            Ok(json!({ "results": [{"name": "A"}], "status": "OK" }))
        );
        assert_eq!(parsed.cut(2), Err(Unbuildable));
    }

    #[test]
    fn a_later_duplicate_field_wins() {
        let parsed =
            Answer::parse(br#"{"status": "A", "results": [1], "status": "OK", "results": [2, 3]}"#)
                .expect("an answer");
        assert_eq!(
            parsed.to_value(),
            Ok(json!({ "results": [2, 3], "status": "OK" }))
        );
    }
}
