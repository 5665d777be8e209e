//! The door panel: a small local HTTP page where a responder's browser presents an override token
//! and proves possession of its security key with a WebAuthn assertion over the lock's challenge.
//!
//! It is the demo's and the tests' stand-in for the NFC/BLE link between a responder's phone and
//! the lock (PROTOCOL.md, "Door panel"), and it is a second *transport* for the tap exchange, not a
//! second verifier: `POST /challenge` is the tap's `Challenge`, `POST /present` builds exactly the
//! tap's `Present { token, proof }` (the proof as `firstkey_token::Proof::WebAuthn`, encoded by
//! the token crate) and hands it to [`Door::decide`] through the same blocking path as the Unix
//! socket in [`crate::tap_server`]; the answer is the same `Allow`/`Deny` and signed `TapAck`.
//!
//! Off unless asked for (`firstkey-agent run --door-panel`), on loopback by default. Everything a
//! visitor can reach is bounded: [`MAX_CONNECTIONS`] requests at once (more are answered 503 and
//! closed), the request head ([`MAX_HEAD`]) and body ([`MAX_BODY`]) capped before they are read,
//! the whole request read within [`PRESENT_TIMEOUT`], one request per connection, at most
//! [`MAX_PENDING`] open challenges that live [`CHALLENGE_TTL_SECS`] by the lock's clock and are
//! used once. A `/present` body that is oversize or malformed gets no decision and no receipt and
//! is counted like a malformed tap frame ([`Door::note_malformed`], bounded writes). A POST must
//! carry the panel's own `Origin`, so another web page cannot drive it from a browser.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use firstkey_token::{Challenge, Proof};
use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};

use crate::door::Door;
use crate::keypad::KeypadAnswer;
use crate::protocol::tap::{MAX_TAP_FRAME, Outcome, PresenterMessage, encode_presenter_message};
use crate::tap_server::{
    PRESENT_TIMEOUT, TapError, decide_blocking, keypad_blocking, note_malformed_blocking,
};

/// Default listen address of the panel: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8470";
/// Requests served at once; more are answered 503 and closed.
pub const MAX_CONNECTIONS: usize = 16;
/// Largest request line plus headers, in bytes.
pub const MAX_HEAD: usize = 8 * 1024;
/// Largest request body, in bytes (a token of at most 1 KiB and an assertion, in base64url JSON).
pub const MAX_BODY: usize = 16 * 1024;
/// Open challenges kept at most; the oldest goes when a new one would exceed it.
pub const MAX_PENDING: usize = 32;
/// Bytes read and dropped after an answer, at most, so the answer is not lost to a reset.
const MAX_DRAIN: usize = 64 * 1024;
/// How long the panel waits for the peer to close after answering.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a challenge may be answered, in seconds of the lock's clock (a person touches a key).
pub const CHALLENGE_TTL_SECS: u64 = 120;

const PAGE: &str = include_str!("door_panel/panel.html");
const SCRIPT: &str = include_str!("door_panel/panel.js");
const STYLE: &str = include_str!("door_panel/panel.css");
const ICON: &str = include_str!("door_panel/icon.svg");
/// The panel's Content-Security-Policy: its own script and style only, no inline code, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
     img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// An open challenge of the panel.
struct Pending {
    id: [u8; 16],
    challenge: Challenge,
    issued_at: u64,
}

/// The panel's shared state: the door and the open challenges.
struct Panel {
    door: Arc<Mutex<Door>>,
    decided: Arc<Notify>,
    pending: Mutex<VecDeque<Pending>>,
}

/// Serve the panel forever on `listener`. `decided` is notified after every decision, as for taps.
pub async fn serve(listener: TcpListener, door: Arc<Mutex<Door>>, decided: Arc<Notify>) {
    let panel = Arc::new(Panel {
        door,
        decided,
        pending: Mutex::new(VecDeque::new()),
    });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Answering "busy" is bounded too; past that, a connection is simply closed.
    let busy_slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                if let Ok(slot) = slots.clone().try_acquire_owned() {
                    let panel = panel.clone();
                    tokio::spawn(async move {
                        let _slot = slot;
                        if let Err(e) = handle(&panel, stream).await {
                            tracing::warn!(error = %e, "door panel request failed");
                        }
                    });
                } else if let Ok(slot) = busy_slots.clone().try_acquire_owned() {
                    tokio::spawn(async move {
                        let _slot = slot;
                        busy(stream).await;
                    });
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "door panel accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Every slot is taken: say so briefly and close, never waiting on the peer for long.
async fn busy(mut stream: TcpStream) {
    let answer = Response::text(503, "The lock is busy; try again.").bytes();
    let quick = async {
        stream.write_all(&answer).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        let mut left = MAX_HEAD;
        while left > 0 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => left = left.saturating_sub(n),
            }
        }
        Ok::<(), std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), quick).await;
}

/// One HTTP request read within the limits.
struct Request {
    method: String,
    path: String,
    host: Option<String>,
    origin: Option<String>,
    body: Vec<u8>,
}

/// Why a request was not read.
enum ReadError {
    /// Not HTTP/1.x we understand (400).
    Garbage,
    /// The head is longer than [`MAX_HEAD`] (431).
    HeadTooLarge,
    /// The declared body is longer than [`MAX_BODY`] (413); `present` says it was a presentation.
    BodyTooLarge { present: bool },
    /// Chunked or otherwise framed bodies are not taken (411).
    LengthRequired,
    /// The peer hung up or stayed silent past the timeout: no answer owed.
    Gone,
}

async fn read_request(stream: &mut TcpStream) -> Result<Request, ReadError> {
    let mut buf = Vec::with_capacity(1024);
    let head_len = loop {
        if let Some(end) = find_head_end(&buf) {
            break end;
        }
        if buf.len() >= MAX_HEAD {
            return Err(ReadError::HeadTooLarge);
        }
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await.map_err(|_| ReadError::Gone)?;
        if n == 0 {
            return Err(ReadError::Gone);
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    };
    if head_len > MAX_HEAD {
        return Err(ReadError::HeadTooLarge);
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(&buf) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(ReadError::Garbage),
    }
    let method = parsed.method.ok_or(ReadError::Garbage)?.to_owned();
    let path = parsed.path.ok_or(ReadError::Garbage)?.to_owned();
    let header = |name: &str| {
        parsed
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::to_owned)
    };
    if header("transfer-encoding").is_some() {
        return Err(ReadError::LengthRequired);
    }
    let length = match header("content-length") {
        None => 0,
        Some(v) => v.trim().parse::<usize>().map_err(|_| ReadError::Garbage)?,
    };
    if length > MAX_BODY {
        return Err(ReadError::BodyTooLarge {
            present: path == "/present" || path == "/keypad",
        });
    }
    let (host, origin) = (header("host"), header("origin"));
    let mut body = buf.get(head_len..).unwrap_or_default().to_vec();
    if body.len() > length {
        return Err(ReadError::Garbage);
    }
    let mut rest = vec![0u8; length.saturating_sub(body.len())];
    stream
        .read_exact(&mut rest)
        .await
        .map_err(|_| ReadError::Gone)?;
    body.extend_from_slice(&rest);
    Ok(Request {
        method,
        path,
        host,
        origin,
        body,
    })
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p.saturating_add(4))
}

/// An HTTP response of the panel.
struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Response {
    fn text(status: u16, body: &str) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
        }
    }

    fn json(status: u16, value: &impl Serialize) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: serde_json::to_vec(value).unwrap_or_default(),
        }
    }

    fn error(status: u16, message: &str) -> Self {
        Self::json(status, &ErrorBody { error: message })
    }

    fn bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            409 => "Conflict",
            429 => "Too Many Requests",
            411 => "Length Required",
            413 => "Content Too Large",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            _ => "Internal Server Error",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             Content-Security-Policy: {CSP}\r\nX-Content-Type-Options: nosniff\r\n\
             Referrer-Policy: no-referrer\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

async fn handle(panel: &Panel, mut stream: TcpStream) -> Result<(), TapError> {
    let request = match tokio::time::timeout(PRESENT_TIMEOUT, read_request(&mut stream)).await {
        Err(_) | Ok(Err(ReadError::Gone)) => {
            tracing::info!("door panel: the browser left or stayed silent; no decision");
            return Ok(());
        }
        Ok(Err(ReadError::BodyTooLarge { present })) => {
            if present {
                tracing::info!("door panel: oversize presentation; no decision");
                note_malformed_blocking(panel.door.clone()).await?;
            }
            return answer(&mut stream, Response::error(413, "request too large")).await;
        }
        Ok(Err(ReadError::HeadTooLarge)) => {
            return answer(&mut stream, Response::error(431, "request head too large")).await;
        }
        Ok(Err(ReadError::LengthRequired)) => {
            return answer(&mut stream, Response::error(411, "give a Content-Length")).await;
        }
        Ok(Err(ReadError::Garbage)) => {
            return answer(&mut stream, Response::error(400, "not an HTTP request")).await;
        }
        Ok(Ok(request)) => request,
    };
    let response = route(panel, &request).await?;
    answer(&mut stream, response).await
}

async fn answer(stream: &mut TcpStream, response: Response) -> Result<(), TapError> {
    // A browser gone by now changes nothing: any decision is already durable.
    let write = async {
        stream.write_all(&response.bytes()).await?;
        stream.shutdown().await
    };
    match tokio::time::timeout(PRESENT_TIMEOUT, write).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::info!(error = %e, "door panel: browser left before the answer"),
        Err(_) => tracing::info!("door panel: browser did not read the answer"),
    }
    // Closing with unread bytes (a refused head or body) would reset the connection and could
    // destroy the answer in flight: read what is left, boundedly, until the peer closes.
    let drain = async {
        let mut sink = [0u8; 4096];
        let mut left = MAX_DRAIN;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
    Ok(())
}

async fn route(panel: &Panel, request: &Request) -> Result<Response, TapError> {
    let path = request.path.split('?').next().unwrap_or_default();
    match (request.method.as_str(), path) {
        ("GET", "/") => page(panel),
        ("GET", "/panel.js") => Ok(Response {
            status: 200,
            content_type: "text/javascript; charset=utf-8",
            body: SCRIPT.as_bytes().to_vec(),
        }),
        ("GET", "/panel.css") => Ok(Response {
            status: 200,
            content_type: "text/css; charset=utf-8",
            body: STYLE.as_bytes().to_vec(),
        }),
        ("GET", "/icon.svg") => Ok(Response {
            status: 200,
            content_type: "image/svg+xml",
            body: ICON.as_bytes().to_vec(),
        }),
        ("POST", "/challenge" | "/present" | "/keypad") if !same_origin(request) => Ok(
            Response::error(403, "only the door panel's own page may post here"),
        ),
        ("POST", "/challenge") => challenge(panel),
        ("POST", "/present") => present(panel, &request.body).await,
        ("POST", "/keypad") => keypad(panel, &request.body).await,
        (
            _,
            "/" | "/panel.js" | "/panel.css" | "/icon.svg" | "/challenge" | "/present" | "/keypad",
        ) => Ok(Response::error(405, "method not allowed")),
        _ => Ok(Response::error(404, "not found")),
    }
}

/// The browser's `Origin` names this panel (as reached through `Host`).
fn same_origin(request: &Request) -> bool {
    match (&request.origin, &request.host) {
        (Some(origin), Some(host)) => {
            origin.strip_prefix("http://") == Some(host.as_str())
                || origin.strip_prefix("https://") == Some(host.as_str())
        }
        _ => false,
    }
}

fn page(panel: &Panel) -> Result<Response, TapError> {
    let (lock_id, rp_id) = {
        let d = panel.door.lock().map_err(|_| TapError::Poisoned)?;
        let store = d.store();
        (
            store.lock_id().to_string(),
            store
                .trust_bundle()
                .map(|b| b.rp_id().to_owned())
                .unwrap_or_default(),
        )
    };
    let body = PAGE
        .replace("{{lock_id}}", &escape_html(&lock_id))
        .replace("{{rp_id}}", &escape_html(&rp_id));
    Ok(Response {
        status: 200,
        content_type: "text/html; charset=utf-8",
        body: body.into_bytes(),
    })
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()
}

/// The tap's `Challenge`, as JSON: a fresh challenge and the id to answer it under.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChallengeBody {
    /// Names this challenge in the presentation (base64url, 16 bytes).
    pub id: String,
    /// The tap protocol's version.
    pub version: u16,
    /// The lock's id, signed over in the proof of possession.
    pub lock_id: String,
    /// 32 fresh random bytes, base64url.
    pub challenge: String,
    /// The WebAuthn relying party the lock checks (`rpIdHash`): the trust bundle's `rp_id`.
    pub rp_id: String,
}

fn challenge(panel: &Panel) -> Result<Response, TapError> {
    let (challenge, lock_id, rp_id, now) = {
        let d = panel.door.lock().map_err(|_| TapError::Poisoned)?;
        let store = d.store();
        (
            d.new_challenge()?,
            store.lock_id().to_string(),
            store
                .trust_bundle()
                .map(|b| b.rp_id().to_owned())
                .unwrap_or_default(),
            d.clock().now(),
        )
    };
    let mut id = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut id)
        .map_err(|_| TapError::Protocol("random number generator failed"))?;
    {
        let mut pending = panel.pending.lock().map_err(|_| TapError::Poisoned)?;
        pending.retain(|p| !expired(p, now));
        while pending.len() >= MAX_PENDING {
            pending.pop_front();
        }
        pending.push_back(Pending {
            id,
            challenge,
            issued_at: now,
        });
    }
    Ok(Response::json(
        200,
        &ChallengeBody {
            id: b64(&id),
            version: crate::protocol::PROTOCOL_VERSION,
            lock_id,
            challenge: b64(&challenge.0),
            rp_id,
        },
    ))
}

fn expired(p: &Pending, now: u64) -> bool {
    now < p.issued_at || now.saturating_sub(p.issued_at) > CHALLENGE_TTL_SECS
}

/// The tap's `Present`, as JSON: the token and the WebAuthn assertion's three parts, base64url.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresentBody {
    /// The challenge id from `/challenge`.
    pub id: String,
    /// The override token's bytes.
    pub token: String,
    /// The assertion's `authenticatorData`.
    pub authenticator_data: String,
    /// The assertion's `clientDataJSON`, exactly as signed.
    pub client_data_json: String,
    /// The assertion's signature (ASN.1 DER).
    pub signature: String,
}

/// The decision, as JSON: the same outcome and signed ack as the tap's `Decision`.
#[derive(Debug, Serialize, Deserialize)]
pub struct DecisionBody {
    /// `"allow"` or `"deny"`.
    pub outcome: String,
    /// The receipt's sequence number.
    pub seq: u64,
    /// The receipt's hash, hex.
    pub receipt_hash: String,
    /// The device key's signature over the tap ack (PROTOCOL.md), hex.
    pub signature: String,
}

/// A decoded presentation: which challenge, and the tap message to decide.
struct Presented {
    id: [u8; 16],
    message: PresenterMessage,
}

fn parse_present(body: &[u8]) -> Option<Presented> {
    let body: PresentBody = serde_json::from_slice(body).ok()?;
    let id: [u8; 16] = unb64(&body.id)?.try_into().ok()?;
    let proof = Proof::WebAuthn {
        authenticator_data: unb64(&body.authenticator_data)?,
        client_data_json: unb64(&body.client_data_json)?,
        signature: unb64(&body.signature)?,
    };
    let message = PresenterMessage::Present {
        token: unb64(&body.token)?,
        proof: Some(serde_bytes::ByteBuf::from(proof.to_cbor())),
    };
    // The same bound as a tap frame: the panel takes nothing the socket would not.
    if encode_presenter_message(&message).ok()?.len() > MAX_TAP_FRAME {
        return None;
    }
    Some(Presented { id, message })
}

async fn present(panel: &Panel, body: &[u8]) -> Result<Response, TapError> {
    let Some(presented) = parse_present(body) else {
        // No decision, no receipt: counted (bounded writes), as a malformed tap frame is.
        tracing::info!("door panel: malformed presentation; no decision");
        note_malformed_blocking(panel.door.clone()).await?;
        return Ok(Response::error(400, "malformed presentation"));
    };
    let now = {
        let d = panel.door.lock().map_err(|_| TapError::Poisoned)?;
        d.clock().now()
    };
    // Each challenge answers one presentation: a replayed request finds it gone.
    let challenge = {
        let mut pending = panel.pending.lock().map_err(|_| TapError::Poisoned)?;
        let found = pending.iter().position(|p| p.id == presented.id);
        found
            .and_then(|i| pending.remove(i))
            .filter(|p| !expired(p, now))
            .map(|p| p.challenge)
    };
    let Some(challenge) = challenge else {
        tracing::info!("door panel: unknown, used or expired challenge; no decision");
        return Ok(Response::error(
            409,
            "this challenge is used or expired; start again",
        ));
    };
    let decision = decide_blocking(panel.door.clone(), challenge, presented.message).await?;
    panel.decided.notify_one();
    Ok(Response::json(
        200,
        &DecisionBody {
            outcome: match decision.outcome {
                Outcome::Allow => "allow",
                Outcome::Deny => "deny",
            }
            .to_owned(),
            seq: decision.ack.seq,
            receipt_hash: hex::encode(decision.ack.receipt_hash.0),
            signature: hex::encode(&decision.ack.signature),
        },
    ))
}

/// The `code` field of a form body (`application/x-www-form-urlencoded`), decoded; `None` when
/// the body is not such a form or has no single `code` field.
fn form_code(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let mut found = None;
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != "code" {
            continue;
        }
        if found.is_some() {
            return None;
        }
        let bytes = value.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            match b {
                b'+' => out.push(b' '),
                b'%' => {
                    let hex = bytes.get(i + 1..i + 3)?;
                    let hex = std::str::from_utf8(hex).ok()?;
                    out.push(u8::from_str_radix(hex, 16).ok()?);
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        found = Some(String::from_utf8(out).ok()?);
    }
    found
}

/// The keypad's answer as a page: the same decision as `firstkey-agent keypad`, in words.
fn keypad_page(status: u16, outcome: &str, words: &str, detail: &str) -> Response {
    let body = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>Keypad · {words}</title>\n<link rel=\"stylesheet\" href=\"/panel.css\">\n</head>\n\
         <body>\n<main>\n<h1>Keypad</h1>\n\
         <p class=\"verdict {outcome}\" id=\"verdict\" data-outcome=\"{outcome}\" role=\"status\">{words}</p>\n\
         <p>{detail}</p>\n<p><a href=\"/#keypad\">Back to the door panel</a></p>\n</main>\n</body>\n</html>\n"
    );
    Response {
        status,
        content_type: "text/html; charset=utf-8",
        body: body.into_bytes(),
    }
}

/// A code typed at the panel's keypad (a form, no script needed): decided by the same
/// [`crate::keypad::decide`] as the tap socket's `Keypad` message — lockout, verify, durable
/// receipt, open — under a fresh challenge for the signed ack. A body that is not a form with one
/// `code` gets no decision and no receipt and is counted like a malformed tap frame.
async fn keypad(panel: &Panel, body: &[u8]) -> Result<Response, TapError> {
    let Some(code) = form_code(body) else {
        tracing::info!("door panel: malformed keypad entry; no decision");
        note_malformed_blocking(panel.door.clone()).await?;
        return Ok(Response::error(400, "malformed keypad entry"));
    };
    let challenge = {
        let d = panel.door.lock().map_err(|_| TapError::Poisoned)?;
        d.new_challenge()?
    };
    let answer = keypad_blocking(panel.door.clone(), challenge, code).await?;
    panel.decided.notify_one();
    Ok(match answer {
        KeypadAnswer::Decided(decision) => {
            let detail = format!(
                "Receipt {} ({}…), signed by the lock.",
                decision.ack.seq,
                hex::encode(decision.ack.receipt_hash.0.get(..8).unwrap_or_default())
            );
            match decision.outcome {
                Outcome::Allow => keypad_page(200, "allow", "Open: the door is unlocked", &detail),
                Outcome::Deny => {
                    keypad_page(200, "deny", "Refused: the door stays locked", &detail)
                }
            }
        }
        KeypadAnswer::Locked { retry_after } => keypad_page(
            429,
            "locked",
            "The keypad is locked",
            &format!(
                "Too many wrong codes. Try again in {retry_after} seconds; nothing was checked."
            ),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keypad_form_gives_exactly_one_code() {
        assert_eq!(
            form_code(b"code=123+456%20789-012-345").as_deref(),
            Some("123 456 789-012-345")
        );
        assert_eq!(form_code(b"x=1&code=42").as_deref(), Some("42"));
        assert_eq!(form_code(b"code=1&code=2"), None);
        assert_eq!(form_code(b"other=1"), None);
        assert_eq!(form_code(b"code=%zz"), None);
        assert_eq!(form_code(b"code=%4"), None);
        assert_eq!(form_code(&[0xff, 0xfe]), None);
    }

    #[test]
    fn only_the_panels_own_origin_may_post() {
        let req = |origin: Option<&str>, host: Option<&str>| Request {
            method: "POST".into(),
            path: "/present".into(),
            host: host.map(str::to_owned),
            origin: origin.map(str::to_owned),
            body: Vec::new(),
        };
        assert!(same_origin(&req(
            Some("http://localhost:8470"),
            Some("localhost:8470")
        )));
        assert!(!same_origin(&req(
            Some("http://evil.example"),
            Some("localhost:8470")
        )));
        assert!(!same_origin(&req(None, Some("localhost:8470"))));
        assert!(!same_origin(&req(Some("null"), Some("localhost:8470"))));
    }

    #[test]
    fn presentations_that_are_not_well_formed_are_refused_before_the_door() {
        assert!(parse_present(b"").is_none());
        assert!(parse_present(b"{\"id\":\"AAAAAAAAAAAAAAAAAAAAAA\"}").is_none());
        let ok = serde_json::json!({
            "id": b64(&[1; 16]), "token": b64(b"t"), "authenticator_data": b64(&[0; 37]),
            "client_data_json": b64(b"{}"), "signature": b64(&[0; 70]),
        });
        assert!(parse_present(ok.to_string().as_bytes()).is_some());
        let big = serde_json::json!({
            "id": b64(&[1; 16]), "token": b64(&[0; 5000]), "authenticator_data": b64(&[0; 37]),
            "client_data_json": b64(b"{}"), "signature": b64(&[0; 70]),
        });
        assert!(parse_present(big.to_string().as_bytes()).is_none());
        let short_id = serde_json::json!({
            "id": b64(&[1; 15]), "token": b64(b"t"), "authenticator_data": b64(&[0; 37]),
            "client_data_json": b64(b"{}"), "signature": b64(&[0; 70]),
        });
        assert!(parse_present(short_id.to_string().as_bytes()).is_none());
        assert_eq!(
            escape_html("<a \"b\">&'"),
            "&lt;a &quot;b&quot;&gt;&amp;&#39;"
        );
    }
}
