//! JSON text laid out the way Google's legacy Places web service lays it out.
//!
//! Google's output follows JsonCpp's old `StyledWriter`, and clients of the
//! original assignment compare answers as text, so this is a faithful port of
//! that writer (`writeValue`, `writeArrayValue`, `isMultineArray`,
//! `writeIndent`) rather than a configuration of `serde_json`'s pretty
//! printer, which differs in spacing, array layout and number format. Turning
//! the text into a WHATSAT answer (squeezing newlines) is left to the caller.

use std::fmt::Write as _;

use serde_json::{Number, Value};

/// Columns an array may take on one line, as in JsonCpp (`rightMargin_`).
const RIGHT_MARGIN: usize = 74;

/// Spaces per nesting level, as in JsonCpp (`indentSize_`).
const INDENT: &str = "   ";

/// Renders `value` as JsonCpp's `StyledWriter` would: three-space indents,
/// `"key" : value`, sorted keys, short arrays of scalars on one line, and a
/// final newline.
pub fn to_styled_string(value: &Value) -> String {
    let mut writer = StyledWriter::default();
    writer.write_value(value);
    writer.document.push('\n');
    writer.document
}

/// The writer's state; the fields mirror JsonCpp's members of the same names.
#[derive(Default)]
struct StyledWriter {
    document: String,
    indent: String,
    /// One-line renderings of an array's items, gathered while deciding
    /// whether the array fits on one line, and reused to write it.
    child_values: Vec<String>,
    /// While set, scalars go to `child_values` instead of the document.
    add_child_values: bool,
}

impl StyledWriter {
    fn write_value(&mut self, value: &Value) {
        match value {
            Value::Null => self.push_value(|out| out.push_str("null")),
            Value::Bool(b) => {
                self.push_value(|out| out.push_str(if *b { "true" } else { "false" }))
            }
            Value::Number(n) => self.push_value(|out| write_number(out, n)),
            Value::String(s) => self.push_value(|out| write_quoted(out, s)),
            Value::Array(items) => self.write_array(items),
            Value::Object(members) if members.is_empty() => {
                self.push_value(|out| out.push_str("{}"))
            }
            Value::Object(members) => {
                // JsonCpp iterates a std::map ordered by strcmp, i.e. by bytes.
                // serde_json's map is sorted the same way unless some crate in
                // the build turns on `preserve_order`, so sort to be sure.
                if members.keys().map(String::as_bytes).is_sorted() {
                    self.write_members(members.iter());
                } else {
                    let mut sorted: Vec<_> = members.iter().collect();
                    sorted.sort_unstable_by(|(a, _), (b, _)| a.as_bytes().cmp(b.as_bytes()));
                    self.write_members(sorted.into_iter());
                }
            }
        }
    }

    /// A non-empty object's members, in the order given.
    fn write_members<'a>(
        &mut self,
        members: impl ExactSizeIterator<Item = (&'a String, &'a Value)>,
    ) {
        self.write_with_indent("{");
        self.indent.push_str(INDENT);
        let last = members.len() - 1;
        for (i, (key, child)) in members.enumerate() {
            self.write_indent();
            write_quoted(&mut self.document, key);
            self.document.push_str(" : ");
            self.write_value(child);
            if i != last {
                self.document.push(',');
            }
        }
        self.unindent();
        self.write_with_indent("}");
    }

    fn write_array(&mut self, items: &[Value]) {
        if items.is_empty() {
            self.push_value(|out| out.push_str("[]"));
        } else if self.is_multiline_array(items) {
            self.write_with_indent("[");
            self.indent.push_str(INDENT);
            // When the array was only too long, its items were already
            // rendered; otherwise (a non-empty container inside, or too many
            // items) they are written afresh, which may nest further arrays.
            let prerendered = std::mem::take(&mut self.child_values);
            let last = items.len() - 1;
            for (i, item) in items.iter().enumerate() {
                match prerendered.get(i) {
                    Some(text) => self.write_with_indent(text),
                    None => {
                        self.write_indent();
                        self.write_value(item);
                    }
                }
                if i != last {
                    self.document.push(',');
                }
            }
            self.unindent();
            self.write_with_indent("]");
        } else {
            // is_multiline_array left exactly one rendering per item.
            self.document.push_str("[ ");
            for (i, text) in self.child_values.iter().enumerate() {
                if i > 0 {
                    self.document.push_str(", ");
                }
                self.document.push_str(text);
            }
            self.document.push_str(" ]");
            self.child_values.clear();
        }
    }

    /// JsonCpp's `isMultineArray`: an array goes on several lines when it
    /// holds a non-empty array or object, has many items, or would not fit in
    /// the right margin. Leaves the items' one-line renderings in
    /// `child_values` when it had to render them to decide.
    fn is_multiline_array(&mut self, items: &[Value]) -> bool {
        self.child_values.clear();
        let is_container = |v: &Value| match v {
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
            _ => false,
        };
        if items.len() * 3 >= RIGHT_MARGIN || items.iter().any(is_container) {
            return true;
        }
        // What is left are scalars and empty containers, which write_value
        // renders through push_value, so into child_values.
        self.add_child_values = true;
        for item in items {
            self.write_value(item);
        }
        self.add_child_values = false;
        // "[ " + items joined by ", " + " ]"
        let line_length =
            4 + (items.len() - 1) * 2 + self.child_values.iter().map(String::len).sum::<usize>();
        line_length >= RIGHT_MARGIN
    }

    /// Writes a scalar (or an empty container) to the document, or to
    /// `child_values` while an array's layout is being decided.
    fn push_value(&mut self, write: impl FnOnce(&mut String)) {
        if self.add_child_values {
            let mut text = String::new();
            write(&mut text);
            self.child_values.push(text);
        } else {
            write(&mut self.document);
        }
    }

    /// Starts a new line at the current indent, unless the document already
    /// ends in a space (after `" : "` or an indent), which is what puts a
    /// member's `{` or `[` on its key's line and an array item's `{` on the
    /// item's line.
    fn write_indent(&mut self) {
        match self.document.as_bytes().last() {
            Some(b' ') => return,
            Some(b'\n') | None => {}
            Some(_) => self.document.push('\n'),
        }
        self.document.push_str(&self.indent);
    }

    fn write_with_indent(&mut self, text: &str) {
        self.write_indent();
        self.document.push_str(text);
    }

    fn unindent(&mut self) {
        let len = self.indent.len().saturating_sub(INDENT.len());
        self.indent.truncate(len);
    }
}

/// A string literal as Google writes it: JsonCpp's escapes, other control
/// characters as `\u00xx`, and `<` `>` escaped so the text is safe to embed
/// in HTML. Everything else, including non-ASCII, is written raw.
fn write_quoted(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    // Everything that needs escaping is ASCII, so splitting at those bytes
    // keeps multi-byte characters whole, and the runs between are copied as
    // they are.
    let mut rest = s;
    while let Some(at) = rest.bytes().position(needs_escape) {
        out.push_str(&rest[..at]);
        let byte = rest.as_bytes()[at];
        match byte {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(byte >> 4)]));
                out.push(char::from(HEX[usize::from(byte & 0xf)]));
            }
        }
        rest = &rest[at + 1..];
    }
    out.push_str(rest);
    out.push('"');
}

/// Control characters, the two JSON specials, and `<` `>` for HTML.
fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || matches!(byte, b'"' | b'\\' | b'<' | b'>')
}

/// Integers as integers; floats as JsonCpp's old `valueToString(double)`.
fn write_number(out: &mut String, n: &Number) {
    match n.as_f64() {
        Some(f) if n.is_f64() => write_double(out, f),
        // An i64 or u64, or (with serde_json's arbitrary_precision) an
        // integer too big for either: its own decimal text is exact.
        _ => {
            write!(out, "{n}").expect("writing to a String cannot fail");
        }
    }
}

/// C's `"%#.16g"`, then, in fixed notation, trailing zeros dropped while
/// keeping one digit after the point: `5.0`, `34.06893`, `0.1`,
/// `1.000000000000000e-05`. Sixteen digits is what makes 34.06893 print as
/// itself rather than as the 17-digit `34.068930000000002`.
fn write_double(out: &mut String, value: f64) {
    const PRECISION: usize = 16;
    if !value.is_finite() {
        // serde_json cannot hold these; JsonCpp's old writer printed what C does.
        let text = if value.is_nan() {
            "nan"
        } else if value > 0.0 {
            "inf"
        } else {
            "-inf"
        };
        out.push_str(text);
        return;
    }
    // The value rounded to 16 significant digits, as %e prints it; Rust's
    // formatting is correctly rounded (ties to even) like glibc's.
    let scientific = format!("{:.*e}", PRECISION - 1, value);
    let (mantissa, exponent) = scientific
        .split_once('e')
        .expect("{:e} formatting always writes an exponent");
    let exponent: i32 = exponent
        .parse()
        .expect("{:e} formatting writes a decimal exponent");
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    // The 16 digits: one before the point, 15 after it.
    let (lead, tail) = mantissa
        .split_once('.')
        .expect("{:.15e} formatting writes a point");
    if negative {
        out.push('-');
    }
    // %g chooses %f when -4 <= exponent < precision.
    match usize::try_from(exponent) {
        Ok(shift) if shift < PRECISION => {
            // ddd.ddd: the same digits with the point moved `shift` places
            // to the right; '#' keeps the
            // point and the zeros after it, which JsonCpp trims to one digit
            // at least. (JsonCpp left C's bare "1000000000000000." alone,
            // which is not JSON; this writes "1000000000000000.0".)
            let (whole_tail, fraction) = tail.split_at(shift);
            out.push_str(lead);
            out.push_str(whole_tail);
            out.push('.');
            match fraction.trim_end_matches('0') {
                "" => out.push('0'),
                fraction => out.push_str(fraction),
            }
        }
        Err(_) if exponent >= -4 => {
            // 0.000ddd: %f with 15 - exponent decimals shows the same digits
            // after the zeros; the first digit is not zero.
            out.push_str("0.");
            for _ in exponent..-1 {
                out.push('0');
            }
            out.push_str(lead);
            out.push_str(tail.trim_end_matches('0'));
        }
        _ => {
            // C writes the exponent signed and with at least two digits.
            let sign = if exponent < 0 { '-' } else { '+' };
            write!(out, "{lead}.{tail}e{sign}{:02}", exponent.unsigned_abs())
                .expect("writing to a String cannot fail");
        }
    }
}

#[cfg(test)]
fn double_to_string(value: f64) -> String {
    let mut out = String::new();
    write_double(&mut out, value);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[track_caller]
    fn check(value: Value, expected: &str) {
        assert_eq!(to_styled_string(&value), expected);
    }

    #[track_caller]
    fn check_double(value: f64, expected: &str) {
        assert_eq!(double_to_string(value), expected, "{value:e}");
    }

    #[test]
    fn scalars_at_top_level() {
        check(json!(null), "null\n");
        check(json!(true), "true\n");
        check(json!(-12), "-12\n");
        check(json!(u64::MAX), "18446744073709551615\n");
        check(json!("x"), "\"x\"\n");
        check(json!(2.5), "2.5\n");
    }

    #[test]
    fn empty_containers() {
        check(json!({}), "{}\n");
        check(json!([]), "[]\n");
        check(
            json!({"a": [], "b": {}, "c": [[], {}]}),
            "{\n   \"a\" : [],\n   \"b\" : {},\n   \"c\" : [ [], {} ]\n}\n",
        );
    }

    #[test]
    fn doubles_print_like_old_jsoncpp() {
        check_double(5.0, "5.0");
        check_double(-5.0, "-5.0");
        check_double(0.0, "0.0");
        check_double(-0.0, "-0.0");
        check_double(0.1, "0.1");
        check_double(34.06893, "34.06893");
        check_double(-118.445127, "-118.445127");
        check_double(1.0 / 3.0, "0.3333333333333333");
        check_double(2.0 / 3.0, "0.6666666666666666");
        check_double(0.0001, "0.0001");
        check_double(0.00012345, "0.00012345");
        check_double(1e-5, "1.000000000000000e-05");
        check_double(1.5e-7, "1.500000000000000e-07");
        check_double(1e15, "1000000000000000.0");
        check_double(1e16, "1.000000000000000e+16");
        check_double(1.2345e100, "1.234500000000000e+100");
        check_double(-2.5e-300, "-2.500000000000000e-300");
        check_double(f64::MAX, "1.797693134862316e+308");
        check_double(f64::MIN_POSITIVE, "2.225073858507201e-308");
        check_double(5e-324, "4.940656458412465e-324");
        check_double(1e23, "9.999999999999999e+22");
        check_double(99.99999999999999, "99.99999999999999");
        // Rounding to 16 digits that carries into the next power of ten.
        check_double(99999999999999995.0, "1.000000000000000e+17");
        check_double(9999999999999999.0, "1.000000000000000e+16");
        // An exact tie at the 17th digit rounds to even, as glibc does.
        check_double(1234567890123456.5, "1234567890123456.0");
        check_double(1234567890123457.5, "1234567890123458.0");
    }

    #[test]
    fn strings_are_escaped_like_google() {
        check(
            json!("a\"b\\c\u{8}\u{c}\n\r\t"),
            "\"a\\\"b\\\\c\\b\\f\\n\\r\\t\"\n",
        );
        check(
            json!("\u{0}\u{1}\u{1f} \u{7f}"),
            "\"\\u0000\\u0001\\u001f \u{7f}\"\n",
        );
        check(
            json!("<a href=\"x\">é/€</a>"),
            "\"\\u003ca href=\\\"x\\\"\\u003eé/€\\u003c/a\\u003e\"\n",
        );
    }

    #[test]
    fn short_array_of_scalars_is_one_line() {
        check(
            json!({"types": ["locality", "political"]}),
            "{\n   \"types\" : [ \"locality\", \"political\" ]\n}\n",
        );
        check(json!([1, 2.5, null, true]), "[ 1, 2.5, null, true ]\n");
    }

    #[test]
    fn array_goes_multiline_at_74_columns() {
        // "[ " + 7 items of 8 chars + 6 ", " + " ]" = 4 + 12 + 56 = 72: one line.
        let fits = json!([
            "aaaaaa", "aaaaaa", "aaaaaa", "aaaaaa", "aaaaaa", "aaaaaa", "aaaaaa"
        ]);
        check(
            fits,
            "[ \"aaaaaa\", \"aaaaaa\", \"aaaaaa\", \"aaaaaa\", \"aaaaaa\", \"aaaaaa\", \"aaaaaa\" ]\n",
        );
        // One more character makes 73, still one line; two more make 74.
        let fits = json!([
            "aaaaaa", "aaaaaa", "aaaaaa", "aaaaaa", "aaaaaa", "aaaaaa", "aaaaaaa"
        ]);
        assert_eq!(to_styled_string(&fits).len(), 73 + 1);
        let too_long = json!([
            "aaaaaa", "aaaaaa", "aaaaaa", "aaaaaa", "aaaaaa", "aaaaaa", "aaaaaaaa"
        ]);
        check(
            too_long,
            "[\n   \"aaaaaa\",\n   \"aaaaaa\",\n   \"aaaaaa\",\n   \"aaaaaa\",\n   \"aaaaaa\",\n   \"aaaaaa\",\n   \"aaaaaaaa\"\n]\n",
        );
    }

    #[test]
    fn many_short_items_go_multiline() {
        // 23 one-character items take 71 columns; 24 take 74. (JsonCpp's
        // early "size * 3 >= 74" test never decides alone: the line is too
        // long by then.)
        let fewer: Vec<u8> = vec![0; 23];
        check(json!(fewer), &format!("[ {} ]\n", vec!["0"; 23].join(", ")));
        let many: Vec<u8> = vec![0; 24];
        let expected = format!("[\n{}\n]\n", vec!["   0"; 24].join(",\n"));
        check(json!(many), &expected);
        let lots: Vec<u8> = vec![0; 30];
        let expected = format!("[\n{}\n]\n", vec!["   0"; 30].join(",\n"));
        check(json!(lots), &expected);
    }

    #[test]
    fn nested_arrays() {
        check(
            json!([[1, 2], [], [3]]),
            "[\n   [ 1, 2 ],\n   [],\n   [ 3 ]\n]\n",
        );
        check(
            json!({"a": [[1, [2]]]}),
            "{\n   \"a\" : [\n      [\n         1,\n         [ 2 ]\n      ]\n   ]\n}\n",
        );
    }

    #[test]
    fn array_of_objects() {
        check(
            json!([{"a": 1}, {"b": [true]}]),
            "[\n   {\n      \"a\" : 1\n   },\n   {\n      \"b\" : [ true ]\n   }\n]\n",
        );
    }

    #[test]
    fn keys_are_sorted_by_bytes() {
        check(
            json!({"b": 1, "B": 2, "a": 3, "é": 4}),
            "{\n   \"B\" : 2,\n   \"a\" : 3,\n   \"b\" : 1,\n   \"é\" : 4\n}\n",
        );
    }

    #[test]
    fn google_like_nearby_search_answer() {
        let answer = json!({
            "html_attributions": [],
            "results": [{
                "geometry": {
                    "location": {"lat": 34.0736204, "lng": -118.4003563},
                    "viewport": {
                        "northeast": {"lat": 34.0842, "lng": -118.3845},
                        "southwest": {"lat": 34.0573, "lng": -118.4270}
                    }
                },
                "icon": "https://maps.gstatic.com/mapfiles/place_api/icons/v1/png_71/geocode-71.png",
                "name": "Beverly Hills",
                "photos": [{
                    "height": 1365,
                    "html_attributions": ["<a href=\"https://maps.google.com/maps/contrib/1\">A B</a>"],
                    "width": 2048
                }],
                "place_id": "ChIJq6qqqmK8woARANmRfA2Dhg0",
                "types": ["locality", "political"],
                "vicinity": "Beverly Hills"
            }, {
                "name": "Somewhere",
                "types": ["establishment", "point_of_interest", "tourist_attraction", "museum", "art_gallery"]
            }],
            "status": "OK"
        });
        let expected = r#"{
   "html_attributions" : [],
   "results" : [
      {
         "geometry" : {
            "location" : {
               "lat" : 34.0736204,
               "lng" : -118.4003563
            },
            "viewport" : {
               "northeast" : {
                  "lat" : 34.0842,
                  "lng" : -118.3845
               },
               "southwest" : {
                  "lat" : 34.0573,
                  "lng" : -118.427
               }
            }
         },
         "icon" : "https://maps.gstatic.com/mapfiles/place_api/icons/v1/png_71/geocode-71.png",
         "name" : "Beverly Hills",
         "photos" : [
            {
               "height" : 1365,
               "html_attributions" : [
                  "\u003ca href=\"https://maps.google.com/maps/contrib/1\"\u003eA B\u003c/a\u003e"
               ],
               "width" : 2048
            }
         ],
         "place_id" : "ChIJq6qqqmK8woARANmRfA2Dhg0",
         "types" : [ "locality", "political" ],
         "vicinity" : "Beverly Hills"
      },
      {
         "name" : "Somewhere",
         "types" : [
            "establishment",
            "point_of_interest",
            "tourist_attraction",
            "museum",
            "art_gallery"
         ]
      }
   ],
   "status" : "OK"
}
"#;
        check(answer, expected);
    }

    /// Equal up to the 16-significant-digit rounding of floats.
    fn nearly_equal(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
                match (x.as_f64(), y.as_f64()) {
                    (Some(x), Some(y)) => x == y || (x - y).abs() <= 1e-15 * x.abs().max(y.abs()),
                    _ => false,
                }
            }
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(x, y)| nearly_equal(x, y))
            }
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len()
                    && x.iter()
                        .all(|(k, v)| y.get(k).is_some_and(|w| nearly_equal(v, w)))
            }
            _ => a == b,
        }
    }

    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            // Any finite double, including subnormals and -0.0.
            any::<f64>()
                .prop_filter("JSON numbers are finite", |f| f.is_finite())
                .prop_map(Value::from),
            (-1e6..1e6f64).prop_map(Value::from),
            any::<String>().prop_map(Value::from),
            "[a-z<>\" ]{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 64, 30, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..30).prop_map(Value::from),
                prop::collection::btree_map(any::<String>(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn output_parses_back_to_the_same_value(value in arbitrary_json()) {
            let text = to_styled_string(&value);
            prop_assert!(text.ends_with('\n'));
            let parsed: Value = serde_json::from_str(&text).expect("styled output is JSON");
            prop_assert!(nearly_equal(&value, &parsed), "{value:?}\n{text}");
        }

        #[test]
        fn doubles_keep_sixteen_digits(f in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
            let text = double_to_string(f);
            let back: f64 = text.parse().expect("a C-style double parses in Rust");
            prop_assert!(back == f || (back - f).abs() <= 1e-15 * f.abs());
            prop_assert!(text.contains('.'), "{text}");
        }
    }
}
