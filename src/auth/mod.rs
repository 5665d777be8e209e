//! Who is asking: sessions (cookie → [`session::Actor`]), WebAuthn ceremonies, accounts and
//! invitations, and the rate limits on signing in and up. Authorization decisions are the policy
//! module's; this module only establishes identity and freshness.

pub mod session;

pub use session::Actor;
