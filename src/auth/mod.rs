//! Who is asking: sessions (cookie → [`session::Actor`]), WebAuthn ceremonies and the clients they
//! are bound to (`client`), accounts and invitations, and the rate limits on signing in and up. Authorization decisions are the policy
//! module's; this module only establishes identity and freshness.

pub mod accounts;
pub mod client;
pub mod deletion;
pub mod error;
pub mod keys;
pub mod pins;
pub mod proof;
pub mod ratelimit;
pub mod session;
pub mod signin;
pub mod webauthn;

pub use session::Actor;
