//! Who started a ceremony: the ceremony cookie, the bindings that tie each ceremony to what started
//! it, and the server secrets of the identity core (derived from the KEK).
//!
//! A sign-in is started by an unauthenticated client, so it is bound to a *ceremony cookie*
//! (`__Host-firstkey-ceremony`, Secure, HttpOnly, SameSite=Strict, Path=/, like the session
//! cookie). Its value is a random nonce, the time it was issued and an HMAC over both under a key
//! derived from the KEK, so the server recognises the cookies it issued without storing them. The
//! database stores only the SHA-256 of a [`Binding`]; finishing a ceremony needs the same binding,
//! and the cap on pending ceremonies is per binding. So a request naming someone else's e-mail can
//! neither finish nor evict that person's ceremonies. Step-ups are bound to the session that started
//! them, enrolments to their one-time link.
//!
//! A client holding a cookie we issued is a *returning* client: the sign-in limits count it on its
//! own (`ratelimit` explains why that keeps a dispatcher's console usable during a flood from its
//! own address).

use actix_web::cookie::{Cookie, SameSite};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use ring::digest::{SHA256, digest};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use uuid::Uuid;

use crate::crypto::Kek;
use crate::domain::{Email, Slug};
use crate::store::StoreError;

/// Name of the ceremony cookie.
pub const COOKIE: &str = "__Host-firstkey-ceremony";
/// How long a ceremony cookie identifies its client.
pub const CLIENT_LIFETIME: Duration = Duration::days(30);
/// Length of a decoy credential id (a typical hardware security key's).
pub const DECOY_CREDENTIAL_ID_LEN: usize = 64;

const NONCE_LEN: usize = 16;
const ISSUED_LEN: usize = 8;
const TAG_LEN: usize = 32;

/// The identity core's server secrets, derived from the KEK (so every replica has the same ones).
pub struct AuthKeys {
    cookie: hmac::Key,
    decoy: hmac::Key,
    token_challenge: hmac::Key,
}

impl AuthKeys {
    /// Derives the keys from the KEK.
    pub fn derive(kek: &Kek) -> Self {
        Self {
            cookie: kek.derive_hmac_key(b"firstkey auth ceremony cookie v1"),
            decoy: kek.derive_hmac_key(b"firstkey auth decoy credentials v1"),
            token_challenge: kek.derive_hmac_key(b"firstkey token challenge v1"),
        }
    }

    /// The key of the stateless token challenges (`proof`).
    pub(super) fn token_challenge(&self) -> &hmac::Key {
        &self.token_challenge
    }

    /// The credential ids a decoy sign-in for `email` of `municipality` offers: the same on every
    /// start (so repeated starts look like a real account's), unrelated between addresses, and
    /// unpredictable without the server secret.
    pub fn decoy_credential_ids(&self, municipality: &Slug, email: &Email) -> Vec<Vec<u8>> {
        let mut input = b"decoy credential\0".to_vec();
        input.extend_from_slice(municipality.as_str().as_bytes());
        input.push(0);
        input.extend_from_slice(email.as_str().to_lowercase().as_bytes());
        let mut id = Vec::with_capacity(DECOY_CREDENTIAL_ID_LEN);
        let mut block = 0u8;
        while id.len() < DECOY_CREDENTIAL_ID_LEN {
            block = block.wrapping_add(1);
            let mut one = input.clone();
            one.push(block);
            id.extend_from_slice(hmac::sign(&self.decoy, &one).as_ref());
        }
        id.truncate(DECOY_CREDENTIAL_ID_LEN);
        vec![id]
    }
}

/// The client behind a ceremony cookie.
pub struct CeremonyClient {
    value: String,
    issued_at: DateTime<Utc>,
    returning: bool,
}

impl CeremonyClient {
    /// The client of a request: the one its cookie names if we issued that cookie within
    /// [`CLIENT_LIFETIME`] (a returning client), otherwise a new one with a fresh cookie.
    pub fn of_request(
        keys: &AuthKeys,
        cookie: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Self, StoreError> {
        if let Some(value) = cookie
            && let Some(issued_at) = verify(keys, value, now)
        {
            return Ok(Self {
                value: value.to_owned(),
                issued_at,
                returning: true,
            });
        }
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| {
            StoreError::Unavailable("system random number generator failed".to_owned())
        })?;
        let issued = now.timestamp().to_be_bytes();
        let mut raw = Vec::with_capacity(NONCE_LEN + ISSUED_LEN + TAG_LEN);
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&issued);
        let tag = hmac::sign(&keys.cookie, &raw);
        raw.extend_from_slice(tag.as_ref());
        Ok(Self {
            value: URL_SAFE_NO_PAD.encode(raw),
            issued_at: now,
            returning: false,
        })
    }

    /// Whether the request carried a cookie we issued.
    pub fn returning(&self) -> bool {
        self.returning
    }

    /// What its ceremonies are bound to.
    pub fn binding(&self) -> Binding {
        Binding::client_cookie(&self.value)
    }

    /// The cookie to set on the response (again, for a returning client: same value, remaining
    /// lifetime).
    pub fn cookie(&self, now: DateTime<Utc>) -> Cookie<'static> {
        let left = (self.issued_at + CLIENT_LIFETIME - now)
            .num_seconds()
            .max(0);
        Cookie::build(COOKIE, self.value.clone())
            .path("/")
            .secure(true)
            .http_only(true)
            .same_site(SameSite::Strict)
            .max_age(actix_web::cookie::time::Duration::seconds(left))
            .finish()
    }

    /// The raw value, for clients that set the cookie header themselves (tests, CLI).
    pub fn expose(&self) -> &str {
        &self.value
    }
}

impl std::fmt::Debug for CeremonyClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CeremonyClient")
            .field("returning", &self.returning)
            .finish_non_exhaustive()
    }
}

/// When a cookie we issued was issued, if it is ours, intact and not older than
/// [`CLIENT_LIFETIME`].
fn verify(keys: &AuthKeys, value: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let raw = URL_SAFE_NO_PAD.decode(value).ok()?;
    if raw.len() != NONCE_LEN + ISSUED_LEN + TAG_LEN {
        return None;
    }
    let (signed, tag) = raw.split_at(NONCE_LEN + ISSUED_LEN);
    hmac::verify(&keys.cookie, signed, tag).ok()?;
    let issued: [u8; ISSUED_LEN] = signed.get(NONCE_LEN..)?.try_into().ok()?;
    let issued_at = DateTime::from_timestamp(i64::from_be_bytes(issued), 0)?;
    // A cookie from the future (a clock set back) is not trusted either.
    (issued_at <= now + Duration::minutes(5) && now - issued_at < CLIENT_LIFETIME)
        .then_some(issued_at)
}

/// What a ceremony is bound to, as stored (`webauthn_ceremonies.client_hash`): SHA-256 over a
/// domain tag and the binding's value, so bindings of different kinds never collide.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Binding([u8; 32]);

impl Binding {
    fn of(tag: &str, value: &[u8]) -> Self {
        let mut input = tag.as_bytes().to_vec();
        input.push(0);
        input.extend_from_slice(value);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest(&SHA256, &input).as_ref());
        Self(out)
    }

    /// A sign-in's: the ceremony cookie's value as presented (whether or not we still accept it as
    /// a returning client's, only the holder of that value can present it).
    pub fn client_cookie(value: &str) -> Self {
        Self::of("ceremony cookie", value.as_bytes())
    }

    /// A step-up's: the session that started it.
    pub fn session(session: Uuid) -> Self {
        Self::of("session", session.as_bytes())
    }

    /// An enrolment's: the one-time link (invitation or verification) it runs under.
    pub fn link(link: Uuid) -> Self {
        Self::of("link", link.as_bytes())
    }

    /// The stored bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Hex of the stored bytes, for rate-limit bucket names (never the cookie itself).
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Binding(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> AuthKeys {
        AuthKeys::derive(&Kek::from_bytes([7u8; 32]))
    }

    #[test]
    fn a_cookie_we_issued_names_a_returning_client_until_it_expires() {
        let keys = keys();
        let now = DateTime::from_timestamp(1_780_000_000, 0).unwrap();
        let fresh = CeremonyClient::of_request(&keys, None, now).unwrap();
        assert!(!fresh.returning());
        let back = CeremonyClient::of_request(&keys, Some(fresh.expose()), now).unwrap();
        assert!(back.returning());
        assert_eq!(back.expose(), fresh.expose());
        let late = now + CLIENT_LIFETIME + Duration::seconds(1);
        let expired = CeremonyClient::of_request(&keys, Some(fresh.expose()), late).unwrap();
        assert!(!expired.returning());
        assert_ne!(expired.expose(), fresh.expose());
    }

    #[test]
    fn a_forged_or_foreign_cookie_is_a_new_client() {
        let keys = keys();
        let now = DateTime::from_timestamp(1_780_000_000, 0).unwrap();
        let other = AuthKeys::derive(&Kek::from_bytes([8u8; 32]));
        let foreign = CeremonyClient::of_request(&other, None, now).unwrap();
        assert!(
            !CeremonyClient::of_request(&keys, Some(foreign.expose()), now)
                .unwrap()
                .returning()
        );
        assert!(
            !CeremonyClient::of_request(&keys, Some("made-up"), now)
                .unwrap()
                .returning()
        );
    }

    #[test]
    fn decoy_ids_are_stable_per_address_and_differ_between_addresses() {
        let keys = keys();
        let town = Slug::parse("town").unwrap();
        let a = Email::parse("a@town.example").unwrap();
        let b = Email::parse("b@town.example").unwrap();
        let first = keys.decoy_credential_ids(&town, &a);
        assert_eq!(first, keys.decoy_credential_ids(&town, &a));
        assert_ne!(first, keys.decoy_credential_ids(&town, &b));
        assert_eq!(first.len(), 1);
        assert!(first.iter().all(|id| id.len() == DECOY_CREDENTIAL_ID_LEN));
    }
}
