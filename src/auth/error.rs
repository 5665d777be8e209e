//! Errors of the identity core (accounts, ceremonies, sign-in). They know nothing of HTTP; the HTTP
//! layer maps them in one place (`http::auth`).

use crate::store::StoreError;

/// Why an identity operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The ceremony is unknown, expired, already used, or belongs to someone else.
    #[error("the ceremony is unknown, expired or already used")]
    CeremonyInvalid,
    /// The invitation or verification link is unknown, expired or already used.
    #[error("the link is unknown, expired or already used")]
    TicketInvalid,
    /// The authenticator's registration was refused; the reason is safe to show (it names a rule,
    /// not a secret).
    #[error("the authenticator was refused: {0}")]
    EnrolmentRefused(&'static str),
    /// Sign-in or step-up failed. Deliberately without detail for the client.
    #[error("authentication failed")]
    AuthenticationFailed,
    /// A rate limit says wait.
    #[error("too many attempts")]
    Limited {
        /// Seconds until a retry may succeed.
        retry_after: u64,
    },
    /// The caller may not do this.
    #[error("not allowed")]
    Forbidden,
    /// The named thing does not exist for this caller.
    #[error("not found")]
    NotFound,
    /// The request conflicts with the current state; the detail is safe to show.
    #[error("conflict: {0}")]
    Conflict(&'static str),
    /// Input was not acceptable; the detail is safe to show.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// The relying party could not be configured from the settings (a fault of ours).
    #[error("webauthn configuration: {0}")]
    Configuration(String),
    /// Serialising ceremony state or a credential failed (a fault of ours).
    #[error("state serialisation: {0}")]
    Serialisation(#[from] serde_json::Error),
    /// The action needs a fresh step-up (a WebAuthn assertion within the step-up window).
    #[error("step-up required")]
    StepUpRequired,
}
