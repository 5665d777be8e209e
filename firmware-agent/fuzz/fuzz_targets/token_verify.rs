//! Fuzz target: untrusted bytes into every decoder and verifier of the token crate, against a
//! fixed trust store. Must never panic, and must never accept a token it did not get from the
//! issuer fixture.
//!
//! The first input byte picks the surface, the rest is the payload:
//! - 0: the bytes as a token (parse + full verification);
//! - 1: a valid token patched at fuzzer-chosen offsets (reaches signature and claim checks with
//!   structurally valid input); acceptance is only allowed if the bytes are unchanged;
//! - 2: the bytes as the proof of possession for a valid P-256 (WebAuthn) `cnf` token;
//! - 3: the bytes as the proof of possession for a valid Ed25519 `cnf` token;
//! - 4: the bytes as a trust bundle (and as an update to the fixture bundle);
//! - 5: the bytes as a stored revocation list (and its re-encoding must round-trip).
#![no_main]

use std::sync::OnceLock;

use firstkey_token::pop::FLAG_USER_PRESENT;
use firstkey_token::{
    BundleContents, Challenge, Claims, ConfirmationKey, GrantId, IssuerKey, KeyId, LockId,
    LockView, Presentation, Proof, RevocationList, RootPublicKey, Scope, SoftwareAuthenticator,
    TokenHash, TokenId, TrustBundle, VerifyOptions, mint, mint_bundle, pop_message, token_hash,
    verify,
};
use libfuzzer_sys::fuzz_target;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};

const NOW: u64 = 1_760_000_000;
const CHALLENGE: Challenge = Challenge([0x5a; 32]);

struct Fixture {
    trust: TrustBundle,
    root: RootPublicKey,
    lock: Lock,
    bearer: Vec<u8>,
    ed: Vec<u8>,
    ed_proof: Vec<u8>,
    p256: Vec<u8>,
}

struct Lock {
    id: LockId,
    revoked: RevocationList,
}

impl LockView for Lock {
    fn lock_id(&self) -> &LockId {
        &self.id
    }
    fn time_floor(&self) -> u64 {
        NOW - 60
    }
    fn is_revoked(&self, token_hash: &TokenHash) -> bool {
        self.revoked.contains(token_hash)
    }
    fn uses(&self, _: &TokenId) -> u32 {
        0
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let rng = SystemRandom::new();
        let issuer = Ed25519KeyPair::from_seed_unchecked(&[1; 32]).unwrap();
        let root = Ed25519KeyPair::from_seed_unchecked(&[0xa0; 32]).unwrap();
        let holder = Ed25519KeyPair::from_seed_unchecked(&[0x77; 32]).unwrap();
        let kid = KeyId::parse(b"k1").unwrap();
        let root_public = RootPublicKey(root.public_key().as_ref().try_into().unwrap());
        let trust = TrustBundle::verify(
            &mint_bundle(
                &BundleContents {
                    former_issuer: None,
                    issuer: "mun-042".into(),
                    version: 1,
                    rp_id: "firstkey.example".into(),
                    keys: vec![IssuerKey {
                        kid: kid.clone(),
                        public_key: issuer.public_key().as_ref().try_into().unwrap(),
                    }],
                },
                &root,
            )
            .unwrap(),
            &root_public,
        )
        .unwrap();
        let lock = Lock {
            id: LockId::parse("Lk7fQ2xW9aBcDeFgHiJkLm").unwrap(),
            revoked: RevocationList::new(),
        };
        let claims = |cnf| Claims {
            issuer: "mun-042".into(),
            subject: "e7-0412".into(),
            audience: lock.id.clone(),
            expires_at: NOW + 900,
            not_before: NOW - 60,
            issued_at: NOW - 60,
            token_id: TokenId([0x11; 16]),
            scope: Scope::Open,
            incident: "25-04711".into(),
            grant: GrantId([0x22; 16]),
            max_uses: 1,
            confirmation: cnf,
        };
        let authenticator = SoftwareAuthenticator::from_pkcs8(
            &SoftwareAuthenticator::generate_pkcs8(&rng).unwrap(),
            "firstkey.example",
            &rng,
        )
        .unwrap();
        let holder_public = holder.public_key().as_ref().try_into().unwrap();
        let bearer = mint(&claims(None), &kid, &issuer).unwrap();
        let ed = mint(&claims(Some(ConfirmationKey::Ed25519(holder_public))), &kid, &issuer).unwrap();
        let p256 = mint(&claims(Some(authenticator.confirmation_key())), &kid, &issuer).unwrap();
        let ed_proof =
            Proof::sign_ed25519(&holder, &pop_message(&CHALLENGE, &lock.id, &token_hash(&ed)))
                .to_cbor();
        // sanity: the fixture itself verifies, so the fuzzer explores from a working state
        let p256_proof = authenticator
            .assert(&pop_message(&CHALLENGE, &lock.id, &token_hash(&p256)), FLAG_USER_PRESENT, &rng)
            .unwrap()
            .to_cbor();
        let presentation = Presentation { challenge: &CHALLENGE, proof: Some(&p256_proof) };
        assert!(verify(&p256, &trust, &lock, &presentation, NOW, &VerifyOptions::default()).is_ok());
        Fixture { trust, root: root_public, lock, bearer, ed, ed_proof, p256 }
    })
}

fn bearer_options() -> VerifyOptions {
    VerifyOptions { require_proof_of_possession: false, ..VerifyOptions::default() }
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((&mode, payload)) = data.split_first() else {
        return;
    };
    let no_proof = Presentation { challenge: &CHALLENGE, proof: None };
    match mode % 6 {
        0 => {
            let result = verify(payload, &f.trust, &f.lock, &no_proof, NOW, &bearer_options());
            if result.is_ok() {
                assert_eq!(payload, f.bearer.as_slice(), "accepted a token the issuer never minted");
            }
        }
        1 => {
            // payload: (offset, xor) pairs applied to the valid bearer token
            let mut token = f.bearer.clone();
            for pair in payload.chunks_exact(2) {
                if let [offset, xor] = pair {
                    let len = token.len();
                    if let Some(b) = token.get_mut(usize::from(*offset) % len) {
                        *b ^= *xor;
                    }
                }
            }
            let result = verify(&token, &f.trust, &f.lock, &no_proof, NOW, &bearer_options());
            assert_eq!(result.is_ok(), token == f.bearer, "patched token accepted");
        }
        2 => {
            let presentation = Presentation { challenge: &CHALLENGE, proof: Some(payload) };
            let _ = verify(&f.p256, &f.trust, &f.lock, &presentation, NOW, &VerifyOptions::default());
        }
        3 => {
            let presentation = Presentation { challenge: &CHALLENGE, proof: Some(payload) };
            let result = verify(&f.ed, &f.trust, &f.lock, &presentation, NOW, &VerifyOptions::default());
            if result.is_ok() {
                assert_eq!(payload, f.ed_proof.as_slice(), "forged Ed25519 proof accepted");
            }
        }
        4 => {
            let _ = TrustBundle::verify(payload, &f.root);
            let _ = f.trust.accept_update(payload, &f.root);
        }
        _ => {
            if let Ok(list) = RevocationList::from_cbor(payload) {
                assert_eq!(list.to_cbor(), payload, "revocation list not canonical");
            }
        }
    }
});
