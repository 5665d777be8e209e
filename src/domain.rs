//! Domain values parsed at the boundary. Each has private fields and a `parse`; code past the
//! boundary holds the typed value and never re-validates.
//!
//! Free text (addresses, names, justifications, notes, phone numbers…) goes through one gate,
//! [`Text`]: whatever its field, text PostgreSQL cannot store (a NUL character) is refused there
//! with an error naming the field, so no such text ever reaches a query.

use std::fmt;

/// A value that failed to parse, with a message fit for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ParseError {
    /// Which input was wrong.
    pub field: &'static str,
    /// What was wrong with it.
    pub reason: String,
}

impl ParseError {
    fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// Refuses text PostgreSQL cannot store. Rust strings are valid UTF-8, so the one character it
/// cannot hold in `text` (nor in `jsonb`) is NUL.
fn storable(field: &'static str, input: &str) -> Result<(), ParseError> {
    if input.contains('\0') {
        Err(ParseError::new(
            field,
            "contains a NUL character, which cannot be stored",
        ))
    } else {
        Ok(())
    }
}

/// Free text from outside: trimmed, 1 to a maximum of characters (as PostgreSQL's `length` counts
/// them), and storable. Every free-text field of the API is parsed through here.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Text(String);

impl Text {
    /// Parses a required field: trimmed, 1 to `max_chars` characters, no NUL.
    pub fn parse(field: &'static str, input: &str, max_chars: usize) -> Result<Self, ParseError> {
        let text = input.trim();
        storable(field, text)?;
        let n = text.chars().count();
        if n == 0 || n > max_chars {
            return Err(ParseError::new(
                field,
                format!("1 to {max_chars} characters"),
            ));
        }
        Ok(Self(text.to_owned()))
    }

    /// Checks text kept as typed (notes, a phone number): at most `max_chars` characters, may be
    /// empty, no NUL.
    pub fn check(field: &'static str, input: &str, max_chars: usize) -> Result<(), ParseError> {
        storable(field, input)?;
        if input.chars().count() > max_chars {
            return Err(ParseError::new(
                field,
                format!("at most {max_chars} characters"),
            ));
        }
        Ok(())
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The text, owned.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A municipality's URL-safe short name: lower-case letters, digits and dashes, 2 to 63 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Slug(String);

impl Slug {
    /// Parses a slug.
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let ok_len = (2..=63).contains(&input.len());
        let ok_chars = input
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        let ok_start = input.chars().next().is_some_and(|c| c != '-');
        if ok_len && ok_chars && ok_start {
            Ok(Self(input.to_owned()))
        } else {
            Err(ParseError::new(
                "slug",
                "use 2 to 63 lower-case letters, digits or dashes, not starting with a dash",
            ))
        }
    }

    /// The slug text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The kind of an emergency agency.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum AgencyKind {
    /// Fire department.
    Fire,
    /// Emergency medical services.
    Ems,
    /// Police.
    Police,
    /// Any other agency (utilities, civil defence…).
    Other,
}

impl AgencyKind {
    /// Parses the stored or submitted name.
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        match input {
            "fire" => Ok(Self::Fire),
            "ems" => Ok(Self::Ems),
            "police" => Ok(Self::Police),
            "other" => Ok(Self::Other),
            _ => Err(ParseError::new(
                "agency kind",
                "must be fire, ems, police or other",
            )),
        }
    }

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fire => "fire",
            Self::Ems => "ems",
            Self::Police => "police",
            Self::Other => "other",
        }
    }
}

/// What a user may act as.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Administers a municipality: agencies, invitations, policies, keys.
    MunicipalAdmin,
    /// Opens incidents and grants entry.
    Dispatcher,
    /// Requests override tokens under grants.
    Responder,
    /// Reads and verifies the audit log.
    Auditor,
    /// Registers properties, locks and access plans.
    Homeowner,
    /// Holds standing access a homeowner gave them to one property (issue 11 §1).
    TrustedParty,
}

impl Role {
    /// Parses the stored or submitted name.
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        match input {
            "municipal_admin" => Ok(Self::MunicipalAdmin),
            "dispatcher" => Ok(Self::Dispatcher),
            "responder" => Ok(Self::Responder),
            "auditor" => Ok(Self::Auditor),
            "homeowner" => Ok(Self::Homeowner),
            "trusted_party" => Ok(Self::TrustedParty),
            _ => Err(ParseError::new(
                "role",
                "must be municipal_admin, dispatcher, responder, auditor, homeowner or trusted_party",
            )),
        }
    }

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MunicipalAdmin => "municipal_admin",
            Self::Dispatcher => "dispatcher",
            Self::Responder => "responder",
            Self::Auditor => "auditor",
            Self::Homeowner => "homeowner",
            Self::TrustedParty => "trusted_party",
        }
    }
}

/// An e-mail address: one `@`, no spaces, at most 320 characters. Deliverability is proven by the
/// verification mail, not by syntax.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    /// Parses an address.
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let input = input.trim();
        storable("email", input)?;
        let valid = input.len() <= 320
            && !input.chars().any(char::is_whitespace)
            && input.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty() && !domain.is_empty() && !domain.contains('@')
            });
        if valid {
            Ok(Self(input.to_owned()))
        } else {
            Err(ParseError::new("email", "not an e-mail address"))
        }
    }

    /// The address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Deserialises an integer field as JSON Schema (and so the OpenAPI document) defines integers: a
/// number with no fractional part, so `60.0` is 60. Out of range for `T` is an error.
pub fn integer<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64>,
{
    struct Integral;
    impl serde::de::Visitor<'_> for Integral {
        type Value = i64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an integer")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(|_| E::custom("integer out of range"))
        }
        #[allow(clippy::cast_possible_truncation, clippy::float_cmp)]
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<i64, E> {
            // 2^63 as f64 is exact; integral values below it convert exactly.
            let limit = 9_223_372_036_854_775_808.0_f64;
            if v.fract() == 0.0 && v >= -limit && v < limit {
                Ok(v as i64)
            } else {
                Err(E::invalid_type(serde::de::Unexpected::Float(v), &self))
            }
        }
    }
    let value = deserializer.deserialize_any(Integral)?;
    T::try_from(value).map_err(|_| serde::de::Error::custom("integer out of range"))
}

/// [`integer`] for an optional field: `null` (or, with `#[serde(default)]`, absent) is `None`.
pub fn optional_integer<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64>,
{
    use serde::Deserialize;
    #[derive(Deserialize)]
    struct Wrapped<T: TryFrom<i64>>(#[serde(deserialize_with = "integer")] T);
    Ok(Option::<Wrapped<T>>::deserialize(deserializer)?.map(|Wrapped(v)| v))
}

/// Deserialises a struct from a JSON object only: serde's derive also takes a struct's fields as an
/// array (`[null, null]` for `{"pets": null, "hazards": null}`), which the document does not allow.
pub fn object<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    use serde::Deserialize;
    let map = serde_json::Map::deserialize(deserializer)?;
    T::deserialize(serde_json::Value::Object(map)).map_err(serde::de::Error::custom)
}

/// [`object`] for an optional field: `null` (or, with `#[serde(default)]`, absent) is `None`.
pub fn optional_object<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    use serde::Deserialize;
    Option::<serde_json::Map<String, serde_json::Value>>::deserialize(deserializer)?
        .map(|map| T::deserialize(serde_json::Value::Object(map)).map_err(serde::de::Error::custom))
        .transpose()
}

/// [`object`] for each element of a list.
pub fn objects<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    use serde::Deserialize;
    Vec::<serde_json::Map<String, serde_json::Value>>::deserialize(deserializer)?
        .into_iter()
        .map(|map| T::deserialize(serde_json::Value::Object(map)).map_err(serde::de::Error::custom))
        .collect()
}

/// The OpenAPI schema of a string field with these limits (`pattern` is an ECMA-262 regular
/// expression, unanchored unless it says `^…$`); the typed values below describe themselves with it.
pub fn string_schema(
    description: &str,
    min_length: usize,
    max_length: usize,
    pattern: Option<&str>,
) -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .min_length(Some(min_length))
        .max_length(Some(max_length))
        .pattern(pattern)
        .build()
}

/// [`Slug::parse`] as a regular expression.
pub const SLUG_PATTERN: &str = "^[a-z0-9][a-z0-9-]{1,62}$";

impl utoipa::PartialSchema for Slug {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        string_schema(
            "A municipality's short name: 2 to 63 lower-case letters, digits or dashes, not \
             starting with a dash.",
            2,
            63,
            Some(SLUG_PATTERN),
        )
        .into()
    }
}

impl utoipa::ToSchema for Slug {}

/// [`Email::parse`] as a regular expression: one `@` with something on both sides, no white space
/// (and no NUL, which text never holds).
// U+0085 (NEL) is white space to Rust's `trim`/`is_whitespace` but not to ECMA-262's `\s`, so the
// document's patterns name it explicitly (schemathesis generated it and was rightly refused).
pub const EMAIL_PATTERN: &str = "^[^\\s@\\u0000\\u0085]+@[^\\s@\\u0000\\u0085]+$";

impl utoipa::PartialSchema for Email {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        string_schema(
            "An e-mail address: one `@`, no white space, at most 320 characters.",
            3,
            320,
            Some(EMAIL_PATTERN),
        )
        .into()
    }
}

impl utoipa::ToSchema for Email {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert!(Slug::parse("demo-city").is_ok());
        for bad in ["", "a", "-x", "Upper", "sp ace", "ü-city"] {
            assert!(Slug::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kinds_and_roles_roundtrip() {
        for k in [
            AgencyKind::Fire,
            AgencyKind::Ems,
            AgencyKind::Police,
            AgencyKind::Other,
        ] {
            assert_eq!(AgencyKind::parse(k.as_str()), Ok(k));
        }
        for r in [
            Role::MunicipalAdmin,
            Role::Dispatcher,
            Role::Responder,
            Role::Auditor,
            Role::Homeowner,
        ] {
            assert_eq!(Role::parse(r.as_str()), Ok(r));
        }
        assert!(Role::parse("root").is_err());
    }

    #[derive(Debug, serde::Deserialize)]
    struct Minutes {
        #[serde(deserialize_with = "integer")]
        minutes: u32,
    }

    #[test]
    fn integers_as_json_schema_counts_them() {
        let parse = |json: &str| serde_json::from_str::<Minutes>(json).map(|m| m.minutes);
        assert_eq!(parse(r#"{"minutes": 60}"#).ok(), Some(60));
        assert_eq!(parse(r#"{"minutes": 60.0}"#).ok(), Some(60));
        for bad in [
            r#"{"minutes": 60.5}"#,
            r#"{"minutes": -1}"#,
            r#"{"minutes": 1e300}"#,
            r#"{"minutes": "60"}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn free_text_is_trimmed_bounded_and_storable() {
        assert_eq!(
            Text::parse("name", "  Front door ", 10).unwrap().as_str(),
            "Front door"
        );
        assert_eq!(Text::parse("name", "ääääää", 6).unwrap().as_str(), "ääääää");
        for bad in ["", "   ", "12345678901", "Front\0door"] {
            let e = Text::parse("name", bad, 10).unwrap_err();
            assert_eq!(e.field, "name", "{bad:?}");
        }
        assert!(Text::check("phone", "", 5).is_ok());
        assert!(Text::check("phone", "123456", 5).is_err());
        assert!(
            Text::check("phone", "1\u{0}2", 5)
                .unwrap_err()
                .reason
                .contains("NUL")
        );
    }

    #[test]
    fn emails() {
        assert!(Email::parse("a@b.example").is_ok());
        for bad in ["", "ab", "a@", "@b", "a b@c", "a@b@c", "a\0@b.example"] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }
}
