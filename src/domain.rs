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
            _ => Err(ParseError::new(
                "role",
                "must be municipal_admin, dispatcher, responder, auditor or homeowner",
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
            Text::check("phone", "1\0 2", 5)
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
