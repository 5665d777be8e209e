//! `firstkey witness`: a second party watching a municipality's log. Each round it fetches the
//! log's checkpoint, verifies the log's signature, checks it against the last checkpoint it accepted
//! (same size ⇒ same root, else a fork; larger ⇒ a consistency proof that verifies; smaller ⇒ a
//! rollback), remembers it (state file, written only after it verified), and posts a C2SP
//! `cosignature/v1` back to the log, which serves it with the checkpoint.
//!
//! The witness trusts nothing from the server but what the log key signed; the consistency proof
//! is checked against the two signed roots with [`super::verify::check_consistent`].

use std::path::{Path, PathBuf};

use ring::signature::Ed25519KeyPair;
use serde::Deserialize;

use super::note::{self, NoteError, VerifiedCheckpoint, VerifierKey};
use super::verify::{self, Inconsistent};

/// What a witness watches and signs with.
pub struct Witness {
    /// The server's base URL, e.g. `https://firstkey.example`.
    pub server: String,
    /// The municipality's slug (the log is at `<server>/log/<slug>`).
    pub municipality: String,
    /// The log's verifier key.
    pub log_key: VerifierKey,
    /// The witness's name (its cosignature key name).
    pub name: String,
    /// The witness's Ed25519 key.
    pub key: Ed25519KeyPair,
    /// Where the last accepted checkpoint is kept.
    pub state: PathBuf,
}

impl std::fmt::Debug for Witness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Witness({} of {})", self.name, self.log_key.name())
    }
}

/// Why a witness round failed.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    /// The log misbehaved: it forked, rolled back or is not append-only. Never cosigned.
    #[error("the log is inconsistent: {0}")]
    Inconsistent(#[from] Inconsistent),
    /// The checkpoint is not signed by the log key (or is malformed).
    #[error("checkpoint refused: {0}")]
    Checkpoint(NoteError),
    /// The state file could not be read or written, or holds a checkpoint that does not verify.
    #[error("state file {path}: {reason}")]
    State {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The server could not be reached or answered unexpectedly.
    #[error("server: {0}")]
    Server(String),
}

/// What a round did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cosigned {
    /// The checkpoint's tree size.
    pub size: u64,
    /// The size seen before, if any.
    pub previous: Option<u64>,
}

fn state_error(path: &Path, reason: impl Into<String>) -> WitnessError {
    WitnessError::State {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn load_state(w: &Witness) -> Result<Option<VerifiedCheckpoint>, WitnessError> {
    match std::fs::read_to_string(&w.state) {
        Ok(text) => note::verify_checkpoint(&text, &w.log_key)
            .map(Some)
            .map_err(|e| state_error(&w.state, format!("does not verify: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(state_error(&w.state, e.to_string())),
    }
}

fn save_state(w: &Witness, checkpoint: &VerifiedCheckpoint) -> Result<(), WitnessError> {
    let tmp = w.state.with_extension("tmp");
    std::fs::write(&tmp, checkpoint.note().encode())
        .and_then(|()| std::fs::rename(&tmp, &w.state))
        .map_err(|e| state_error(&w.state, e.to_string()))
}

#[derive(Deserialize)]
struct ConsistencyBody {
    proof: Vec<String>,
}

async fn get_text(http: &reqwest::Client, url: &str) -> Result<String, WitnessError> {
    let response = http
        .get(url)
        .send()
        .await
        .map_err(|e| WitnessError::Server(format!("{url}: {e}")))?;
    if !response.status().is_success() {
        return Err(WitnessError::Server(format!(
            "{url}: HTTP {}",
            response.status()
        )));
    }
    response
        .text()
        .await
        .map_err(|e| WitnessError::Server(format!("{url}: {e}")))
}

/// One round: fetch, check, remember, cosign, post. Refuses (and keeps its state) when the log is
/// inconsistent with what it saw before.
pub async fn round(
    w: &Witness,
    http: &reqwest::Client,
    now_unix: u64,
) -> Result<Cosigned, WitnessError> {
    let server = w.server.trim_end_matches('/');
    let text = get_text(http, &format!("{server}/log/{}/checkpoint", w.municipality)).await?;
    let new = note::verify_checkpoint(&text, &w.log_key).map_err(WitnessError::Checkpoint)?;
    let old = load_state(w)?;
    if let Some(old) = &old {
        let proof = if new.size() > old.size() {
            let url = format!(
                "{server}/api/v1/log/{}/proof/consistency?first={}&second={}",
                w.municipality,
                old.size(),
                new.size()
            );
            let body: ConsistencyBody = serde_json::from_str(&get_text(http, &url).await?)
                .map_err(|e| WitnessError::Server(format!("{url}: {e}")))?;
            verify::decode_hashes(&body.proof).map_err(WitnessError::Server)?
        } else {
            Vec::new()
        };
        verify::check_consistent(old, &new, &proof)?;
    }
    save_state(w, &new)?;
    let cosignature =
        note::cosign(new.body(), &w.name, &w.key, now_unix).map_err(WitnessError::Checkpoint)?;
    let posted = format!("{}\n{}", new.body(), cosignature.line());
    let url = format!("{server}/log/{}/cosignature", w.municipality);
    let response = http
        .post(&url)
        .header("content-type", "text/plain; charset=utf-8")
        .body(posted)
        .send()
        .await
        .map_err(|e| WitnessError::Server(format!("{url}: {e}")))?;
    if !response.status().is_success() {
        return Err(WitnessError::Server(format!(
            "{url}: HTTP {}",
            response.status()
        )));
    }
    Ok(Cosigned {
        size: new.size(),
        previous: old.map(|o| o.size()),
    })
}
