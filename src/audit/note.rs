//! C2SP formats of the log's public statements: `signed-note` (text, a blank line, signature lines
//! `— <name> base64(key id ‖ signature)`), verifier keys (`<name>+<hex key id>+base64(type ‖ key)`),
//! `tlog-checkpoint` bodies (origin, tree size, base64 root hash, optional extension lines) and
//! `tlog-cosignature` v1 (Ed25519 over `cosignature/v1\ntime <t>\n` ‖ checkpoint body, the signature
//! prefixed by the 8-byte big-endian time).
//!
//! [`VerifiedCheckpoint`] can only be made by verifying a note's signature, so code that takes one
//! takes its tree size and root from a signed checkpoint and from nowhere else.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use super::merkle::Hash;

/// Signature type of Ed25519 note signatures (signed-note).
pub const SIG_ED25519: u8 = 0x01;
/// Signature type of Ed25519 `cosignature/v1` (tlog-cosignature).
pub const SIG_COSIGNATURE_V1: u8 = 0x04;

const DASH: &str = "\u{2014} ";
/// Most signature lines a note may carry (as Go's `note.Open`).
const MAX_SIGNATURES: usize = 100;

/// Why a note, key or checkpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// Not a well-formed note, key or checkpoint; the text says what.
    #[error("malformed: {0}")]
    Malformed(String),
    /// No signature by the expected key.
    #[error("no signature by {0}")]
    Unsigned(String),
    /// A signature by the expected key does not verify.
    #[error("the signature by {0} does not verify")]
    BadSignature(String),
    /// The checkpoint names another origin than the key that signed it.
    #[error("checkpoint origin {found:?} is not the log {expected:?}")]
    WrongOrigin {
        /// The key's name.
        expected: String,
        /// The checkpoint's origin line.
        found: String,
    },
}

fn malformed(what: impl Into<String>) -> NoteError {
    NoteError::Malformed(what.into())
}

/// A key name: non-empty, no whitespace, no `+`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

/// `SHA-256(name ‖ 0x0A ‖ type ‖ public key)[:4]`.
pub fn key_id(name: &str, sig_type: u8, public_key: &[u8; 32]) -> [u8; 4] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(name.as_bytes());
    ctx.update(b"\n");
    ctx.update(&[sig_type]);
    ctx.update(public_key);
    let mut id = [0u8; 4];
    if let Some(head) = ctx.finish().as_ref().get(..4) {
        id.copy_from_slice(head);
    }
    id
}

/// A verifier key: who signs, with which Ed25519 public key, for which signature type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierKey {
    name: String,
    sig_type: u8,
    public_key: [u8; 32],
    id: [u8; 4],
}

impl VerifierKey {
    /// A key from its parts.
    pub fn new(name: &str, sig_type: u8, public_key: [u8; 32]) -> Result<Self, NoteError> {
        if !valid_name(name) {
            return Err(malformed(format!("key name {name:?}")));
        }
        Ok(Self {
            name: name.to_owned(),
            sig_type,
            public_key,
            id: key_id(name, sig_type, &public_key),
        })
    }

    /// Parses `<name>+<hex key id>+<base64(type ‖ key)>`; the key id must match.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let text = text.trim();
        let mut parts = text.splitn(3, '+');
        let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("verifier key must be <name>+<hash>+<key>"));
        };
        let key = STANDARD
            .decode(key_b64)
            .map_err(|_| malformed("verifier key: key is not base64"))?;
        let (&sig_type, rest) = key
            .split_first()
            .ok_or_else(|| malformed("verifier key: empty key"))?;
        if sig_type != SIG_ED25519 && sig_type != SIG_COSIGNATURE_V1 {
            return Err(malformed(format!(
                "verifier key: unsupported type {sig_type:#04x}"
            )));
        }
        let public_key: [u8; 32] = rest
            .try_into()
            .map_err(|_| malformed("verifier key: an Ed25519 key is 32 bytes"))?;
        let key = Self::new(name, sig_type, public_key)?;
        if id_hex.len() != 8 || hex::encode(key.id) != id_hex.to_ascii_lowercase() {
            return Err(malformed(
                "verifier key: key hash does not match name and key",
            ));
        }
        Ok(key)
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The 4-byte key id.
    pub fn id(&self) -> [u8; 4] {
        self.id
    }

    /// The signature type.
    pub fn sig_type(&self) -> u8 {
        self.sig_type
    }

    /// The Ed25519 public key.
    pub fn public_key(&self) -> &[u8; 32] {
        &self.public_key
    }

    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.public_key)
            .verify(message, signature)
            .is_ok()
    }
}

impl std::fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut key = vec![self.sig_type];
        key.extend_from_slice(&self.public_key);
        write!(
            f,
            "{}+{}+{}",
            self.name,
            hex::encode(self.id),
            STANDARD.encode(key)
        )
    }
}

/// The verifier key of an Ed25519 pair under `name`.
pub fn verifier_of(
    name: &str,
    sig_type: u8,
    pair: &Ed25519KeyPair,
) -> Result<VerifierKey, NoteError> {
    let public_key: [u8; 32] = pair
        .public_key()
        .as_ref()
        .try_into()
        .map_err(|_| malformed("unexpected public key length"))?;
    VerifierKey::new(name, sig_type, public_key)
}

/// One signature line of a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    /// The signer's key name.
    pub name: String,
    /// The signer's key id.
    pub key_id: [u8; 4],
    /// The signature bytes after the key id.
    pub signature: Vec<u8>,
}

impl NoteSignature {
    /// The line, with its final newline.
    pub fn line(&self) -> String {
        let mut blob = self.key_id.to_vec();
        blob.extend_from_slice(&self.signature);
        format!("{DASH}{} {}\n", self.name, STANDARD.encode(blob))
    }
}

/// A parsed (not yet verified) note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The signed text, ending in a newline.
    pub text: String,
    /// Its signature lines, in order.
    pub signatures: Vec<NoteSignature>,
}

impl Note {
    /// Parses a signed note. The text is everything up to the last blank line.
    pub fn parse(input: &str) -> Result<Self, NoteError> {
        if input.chars().any(|c| c.is_control() && c != '\n') {
            return Err(malformed("control character in note"));
        }
        let split = input
            .rfind("\n\n")
            .ok_or_else(|| malformed("note has no blank line before its signatures"))?;
        let text = input
            .get(..=split)
            .ok_or_else(|| malformed("note text"))?
            .to_owned();
        let block = input
            .get(split.saturating_add(2)..)
            .ok_or_else(|| malformed("note signatures"))?;
        if !block.ends_with('\n') {
            return Err(malformed("note does not end with a newline"));
        }
        let mut signatures = Vec::new();
        for line in block.split_terminator('\n') {
            let rest = line
                .strip_prefix(DASH)
                .ok_or_else(|| malformed("signature line must start with an em dash"))?;
            let (name, b64) = rest
                .split_once(' ')
                .ok_or_else(|| malformed("signature line must be `— <name> <signature>`"))?;
            if !valid_name(name) {
                return Err(malformed(format!("signature key name {name:?}")));
            }
            let blob = STANDARD
                .decode(b64)
                .map_err(|_| malformed("signature is not base64"))?;
            if blob.len() < 5 {
                return Err(malformed("signature too short"));
            }
            let (id, signature) = blob.split_at(4);
            let mut key_id = [0u8; 4];
            key_id.copy_from_slice(id);
            signatures.push(NoteSignature {
                name: name.to_owned(),
                key_id,
                signature: signature.to_vec(),
            });
        }
        if signatures.is_empty() {
            return Err(malformed("note has no signatures"));
        }
        if signatures.len() > MAX_SIGNATURES {
            return Err(malformed("note has too many signatures"));
        }
        Ok(Self { text, signatures })
    }

    /// The note as served: text, blank line, signature lines.
    pub fn encode(&self) -> String {
        let mut out = self.text.clone();
        out.push('\n');
        for s in &self.signatures {
            out.push_str(&s.line());
        }
        out
    }

    /// Verifies the signature(s) by `key` over the text (type 0x01). Any failing signature by the
    /// key rejects the note; at least one must be present.
    pub fn verify(&self, key: &VerifierKey) -> Result<(), NoteError> {
        let mut found = false;
        for s in self.by(key) {
            if !key.verify(self.text.as_bytes(), &s.signature) {
                return Err(NoteError::BadSignature(key.name.clone()));
            }
            found = true;
        }
        if found {
            Ok(())
        } else {
            Err(NoteError::Unsigned(key.name.clone()))
        }
    }

    fn by<'a>(&'a self, key: &'a VerifierKey) -> impl Iterator<Item = &'a NoteSignature> + 'a {
        self.signatures
            .iter()
            .filter(move |s| s.name == key.name && s.key_id == key.id)
    }
}

/// Signs `text` (which must end in a newline) with `pair` under `name`, as a type-0x01 signature.
pub fn sign(text: &str, name: &str, pair: &Ed25519KeyPair) -> Result<NoteSignature, NoteError> {
    if !text.ends_with('\n') || text.contains("\n\n") {
        return Err(malformed(
            "note text must end in one newline and hold no blank line",
        ));
    }
    let key = verifier_of(name, SIG_ED25519, pair)?;
    Ok(NoteSignature {
        name: name.to_owned(),
        key_id: key.id,
        signature: pair.sign(text.as_bytes()).as_ref().to_vec(),
    })
}

/// A checkpoint body (tlog-checkpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's identity.
    pub origin: String,
    /// Number of leaves.
    pub size: u64,
    /// RFC 9162 root hash.
    pub root: Hash,
}

impl Checkpoint {
    /// The body text: three lines, each ending in a newline.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root)
        )
    }

    /// Parses a body; extension lines after the third are allowed and ignored.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        if !text.ends_with('\n') {
            return Err(malformed("checkpoint does not end with a newline"));
        }
        let mut lines = text.split_terminator('\n');
        let (Some(origin), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next())
        else {
            return Err(malformed(
                "checkpoint needs origin, size and root hash lines",
            ));
        };
        if origin.is_empty() {
            return Err(malformed("empty checkpoint origin"));
        }
        if lines.any(str::is_empty) {
            return Err(malformed("empty checkpoint extension line"));
        }
        if size.is_empty()
            || !size.bytes().all(|b| b.is_ascii_digit())
            || (size.len() > 1 && size.starts_with('0'))
        {
            return Err(malformed("checkpoint tree size is not a decimal number"));
        }
        let size: u64 = size
            .parse()
            .map_err(|_| malformed("checkpoint tree size too large"))?;
        let root: Hash = STANDARD
            .decode(root)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| malformed("checkpoint root hash is not base64 of 32 bytes"))?;
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
        })
    }
}

/// A checkpoint whose log signature verified. Only [`verify_checkpoint`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCheckpoint {
    checkpoint: Checkpoint,
    note: Note,
}

impl VerifiedCheckpoint {
    /// The log's origin line.
    pub fn origin(&self) -> &str {
        &self.checkpoint.origin
    }

    /// The signed tree size.
    pub fn size(&self) -> u64 {
        self.checkpoint.size
    }

    /// The signed root hash.
    pub fn root(&self) -> &Hash {
        &self.checkpoint.root
    }

    /// The signed body text.
    pub fn body(&self) -> &str {
        &self.note.text
    }

    /// The whole note as received, with every signature line.
    pub fn note(&self) -> &Note {
        &self.note
    }

    /// The witnesses among `witnesses` with a valid cosignature, with their time. Unknown or
    /// invalid cosignatures are not counted.
    pub fn cosigned_by(&self, witnesses: &[VerifierKey]) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for w in witnesses {
            if let Some(time) = self
                .note
                .by(w)
                .find_map(|s| verify_cosignature(&self.note.text, w, &s.signature))
            {
                out.push((w.name.clone(), time));
            }
        }
        out
    }
}

/// Verifies `note` as a checkpoint signed by `log_key`, whose name must be the origin.
pub fn verify_checkpoint(
    note: &str,
    log_key: &VerifierKey,
) -> Result<VerifiedCheckpoint, NoteError> {
    let note = Note::parse(note)?;
    note.verify(log_key)?;
    let checkpoint = Checkpoint::parse(&note.text)?;
    if checkpoint.origin != log_key.name {
        return Err(NoteError::WrongOrigin {
            expected: log_key.name.clone(),
            found: checkpoint.origin,
        });
    }
    Ok(VerifiedCheckpoint { checkpoint, note })
}

fn cosigned_message(body: &str, time: u64) -> String {
    format!("cosignature/v1\ntime {time}\n{body}")
}

/// A `cosignature/v1` signature line over a checkpoint body, made at `time` (POSIX seconds).
pub fn cosign(
    body: &str,
    name: &str,
    pair: &Ed25519KeyPair,
    time: u64,
) -> Result<NoteSignature, NoteError> {
    let key = verifier_of(name, SIG_COSIGNATURE_V1, pair)?;
    let mut signature = time.to_be_bytes().to_vec();
    signature.extend_from_slice(pair.sign(cosigned_message(body, time).as_bytes()).as_ref());
    Ok(NoteSignature {
        name: name.to_owned(),
        key_id: key.id,
        signature,
    })
}

/// The time of a valid cosignature by `witness` over `body`, or `None`.
pub fn verify_cosignature(body: &str, witness: &VerifierKey, signature: &[u8]) -> Option<u64> {
    if witness.sig_type != SIG_COSIGNATURE_V1 || signature.len() != 72 {
        return None;
    }
    let (time, sig) = signature.split_at(8);
    let time = u64::from_be_bytes(time.try_into().ok()?);
    if time > i64::MAX as u64 {
        return None;
    }
    witness
        .verify(cosigned_message(body, time).as_bytes(), sig)
        .then_some(time)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    // golang.org/x/mod/sumdb/note's published test vector.
    const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const PETER_SEED: &str = "AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const TEXT: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
    const PETER_SIG: &str = "\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
    const ENOCH_SIG: &str = "\u{2014} EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n";

    fn peter() -> Ed25519KeyPair {
        let seed = STANDARD.decode(PETER_SEED).unwrap();
        Ed25519KeyPair::from_seed_unchecked(&seed[1..]).unwrap()
    }

    #[test]
    fn signing_reproduces_the_go_note_vector_and_verifies_it() {
        let pair = peter();
        let key = verifier_of("PeterNeumann", SIG_ED25519, &pair).unwrap();
        assert_eq!(key.to_string(), PETER_VKEY);
        assert_eq!(VerifierKey::parse(PETER_VKEY).unwrap(), key);
        let sig = sign(TEXT, "PeterNeumann", &pair).unwrap();
        assert_eq!(sig.line(), PETER_SIG);
        let note = Note::parse(&format!("{TEXT}\n{PETER_SIG}{ENOCH_SIG}")).unwrap();
        assert_eq!(note.text, TEXT);
        note.verify(&key).unwrap();
        let tampered = Note::parse(&format!("{}\n{PETER_SIG}", TEXT.replace('y', "Y"))).unwrap();
        assert_eq!(
            tampered.verify(&key),
            Err(NoteError::BadSignature("PeterNeumann".into()))
        );
        let enoch_only = Note::parse(&format!("{TEXT}\n{ENOCH_SIG}")).unwrap();
        assert_eq!(
            enoch_only.verify(&key),
            Err(NoteError::Unsigned("PeterNeumann".into()))
        );
    }

    #[test]
    fn verifier_keys_with_a_wrong_hash_or_shape_are_refused() {
        assert!(VerifierKey::parse(&PETER_VKEY.replace("c74f20a3", "c74f20a4")).is_err());
        assert!(VerifierKey::parse("PeterNeumann+c74f20a3").is_err());
        assert!(VerifierKey::parse(&PETER_VKEY.replace("PeterNeumann", "Peter Neumann")).is_err());
        assert!(VerifierKey::parse("a+00000000+AAAA").is_err());
    }

    #[test]
    fn checkpoints_round_trip_and_malformed_ones_are_refused() {
        let cp = Checkpoint {
            origin: "example.org/log/springfield".into(),
            size: 20852163,
            root: [7; 32],
        };
        assert_eq!(Checkpoint::parse(&cp.body()).unwrap(), cp);
        assert_eq!(
            Checkpoint::parse(&format!("{}ext line\n", cp.body())).unwrap(),
            cp
        );
        let root = STANDARD.encode([0u8; 32]);
        for bad in [
            format!("o\n07\n{root}\n"),
            "o\n7\n".to_owned(),
            "o\n7\nAAAA\n".to_owned(),
            format!("o\n7\n{root}"),
            format!("o\n-7\n{root}\n"),
            format!("\n7\n{root}\n"),
        ] {
            assert!(Checkpoint::parse(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_checkpoint_verifies_only_under_its_own_log_key_and_origin() {
        let pair = peter();
        let cp = Checkpoint {
            origin: "PeterNeumann".into(),
            size: 3,
            root: [1; 32],
        };
        let note = Note {
            text: cp.body(),
            signatures: vec![sign(&cp.body(), "PeterNeumann", &pair).unwrap()],
        }
        .encode();
        let key = VerifierKey::parse(PETER_VKEY).unwrap();
        let v = verify_checkpoint(&note, &key).unwrap();
        assert_eq!((v.size(), v.root()), (3, &[1; 32]));
        let other = Ed25519KeyPair::from_seed_unchecked(&[9; 32]).unwrap();
        let other_key = verifier_of("PeterNeumann", SIG_ED25519, &other).unwrap();
        assert!(matches!(
            verify_checkpoint(&note, &other_key),
            Err(NoteError::Unsigned(_))
        ));
        let wrong_origin = Checkpoint {
            origin: "elsewhere".into(),
            ..cp
        };
        let note = Note {
            text: wrong_origin.body(),
            signatures: vec![sign(&wrong_origin.body(), "PeterNeumann", &pair).unwrap()],
        }
        .encode();
        assert!(matches!(
            verify_checkpoint(&note, &key),
            Err(NoteError::WrongOrigin { .. })
        ));
    }

    #[test]
    fn cosignatures_sign_the_spec_message_and_bind_the_body() {
        let body =
            "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
        let w = Ed25519KeyPair::from_seed_unchecked(&[4; 32]).unwrap();
        let key = verifier_of("witness.example/w1", SIG_COSIGNATURE_V1, &w).unwrap();
        let sig = cosign(body, "witness.example/w1", &w, 1679315147).unwrap();
        assert_eq!(&sig.signature[..8], &1679315147u64.to_be_bytes());
        let message = format!("cosignature/v1\ntime 1679315147\n{body}");
        UnparsedPublicKey::new(&ED25519, key.public_key())
            .verify(message.as_bytes(), &sig.signature[8..])
            .unwrap();
        assert_eq!(
            verify_cosignature(body, &key, &sig.signature),
            Some(1679315147)
        );
        assert_eq!(
            verify_cosignature(&body.replace("2085", "2086"), &key, &sig.signature),
            None
        );
        // The key id of a cosigner differs from the same key used as a log key (type 0x04).
        let as_log = verifier_of("witness.example/w1", SIG_ED25519, &w).unwrap();
        assert_ne!(as_log.id(), key.id());
        assert_eq!(verify_cosignature(body, &as_log, &sig.signature), None);
    }
}
