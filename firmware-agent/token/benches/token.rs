//! Override-token benchmark: sizes, mint and verify times against the raw `ring` Ed25519 verify
//! floor, and the same claims as a JWT (jsonwebtoken, EdDSA) for comparison.
//!
//! `cargo bench -p firstkey-token` prints a summary table first (own timing loop: median of 21
//! samples), then runs the criterion benchmarks for the detailed statistics.

// Benchmark code: a failed unwrap is a broken benchmark, reported loudly.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::cast_precision_loss,
    missing_docs
)]

use std::hint::black_box;
use std::time::Instant;

use criterion::Criterion;
use firstkey_token::pop::FLAG_USER_PRESENT;
use firstkey_token::{
    BundleContents, Challenge, Claims, ConfirmationKey, GrantId, IssuerKey, KeyId, LockId,
    LockView, Presentation, Proof, RevocationList, RootPublicKey, Scope, SoftwareAuthenticator,
    TokenHash, TokenId, TrustBundle, UnverifiedToken, VerifyOptions, mint, mint_bundle,
    pop_message, token_hash, verify,
};
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

const NOW: u64 = 1_760_000_000;
const CHALLENGE: Challenge = Challenge([0x5a; 32]);

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

/// Realistic, short identifiers: a municipality code, a 22-character lock id (128 random bits,
/// base64url), a unit call sign, a CAD incident number, uuid bytes for cti and grant.
fn claims(confirmation: Option<ConfirmationKey>) -> Claims {
    Claims {
        issuer: "mun-042".into(),
        subject: "e7-0412".into(),
        audience: LockId::parse("Lk7fQ2xW9aBcDeFgHiJkLm").unwrap(),
        expires_at: NOW + 900,
        not_before: NOW - 60,
        issued_at: NOW - 60,
        token_id: TokenId([0x11; 16]),
        scope: Scope::Open,
        incident: "25-04711".into(),
        grant: GrantId([0x22; 16]),
        max_uses: 1,
        confirmation,
    }
}

/// The same claims as JWT claims (RFC 7519 names, RFC 7800 `cnf.jwk`), binary ids as base64url.
#[derive(serde::Serialize, serde::Deserialize)]
struct JwtClaims {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    scope: String,
    incident: String,
    grant: String,
    max_uses: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    cnf: Option<serde_json::Value>,
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn jwt_claims(c: &Claims) -> JwtClaims {
    JwtClaims {
        iss: c.issuer.clone(),
        sub: c.subject.clone(),
        aud: c.audience.to_string(),
        exp: c.expires_at,
        nbf: c.not_before,
        iat: c.issued_at,
        jti: b64(c.token_id.as_bytes()),
        scope: c.scope.as_str().into(),
        incident: c.incident.clone(),
        grant: b64(c.grant.as_bytes()),
        max_uses: c.max_uses,
        cnf: c.confirmation.map(|k| match k {
            ConfirmationKey::Ed25519(x) => {
                serde_json::json!({"jwk": {"kty": "OKP", "crv": "Ed25519", "x": b64(&x)}})
            }
            ConfirmationKey::P256(p) => serde_json::json!({"jwk": {
                "kty": "EC", "crv": "P-256", "x": b64(&p[1..33]), "y": b64(&p[33..])
            }}),
        }),
    }
}

/// Iterations that take about 20 ms.
fn calibrate(f: &mut impl FnMut()) -> u32 {
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed().as_millis() < 20 {
        f();
        n += 1;
    }
    n
}

/// Nanoseconds per call of `f` and of `g`, and the median of their per-round ratio `g / f`,
/// measured interleaved (31 rounds, each ~20 ms per side) so load on a shared machine hits
/// both sides alike.
fn paired_ns(mut f: impl FnMut(), mut g: impl FnMut()) -> (f64, f64, f64) {
    let n = calibrate(&mut f);
    let (mut fs, mut gs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..31 {
        let start = Instant::now();
        for _ in 0..n {
            f();
        }
        let a = start.elapsed().as_nanos() as f64 / f64::from(n);
        let start = Instant::now();
        for _ in 0..n {
            g();
        }
        let b = start.elapsed().as_nanos() as f64 / f64::from(n);
        fs.push(a);
        gs.push(b);
        ratios.push(b / a);
    }
    for v in [&mut fs, &mut gs, &mut ratios] {
        v.sort_by(f64::total_cmp);
    }
    (fs[15], gs[15], ratios[15])
}

/// Median nanoseconds per call of `f`, over 21 samples.
fn time_ns(mut f: impl FnMut()) -> f64 {
    let mut per_call = Vec::with_capacity(21);
    // calibrate: about 20 ms per sample
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed().as_millis() < 20 {
        f();
        n += 1;
    }
    for _ in 0..21 {
        let start = Instant::now();
        for _ in 0..n {
            f();
        }
        per_call.push(start.elapsed().as_nanos() as f64 / f64::from(n));
    }
    per_call.sort_by(f64::total_cmp);
    per_call[10]
}

fn main() {
    let rng = SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let issuer = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let issuer_public: [u8; 32] = issuer.public_key().as_ref().try_into().unwrap();
    let kid = KeyId::parse(b"k1").unwrap();
    let root = Ed25519KeyPair::from_seed_unchecked(&[0xa0; 32]).unwrap();
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
                    public_key: issuer_public,
                }],
            },
            &root,
        )
        .unwrap(),
        &root_public,
    )
    .unwrap();
    let mut revoked = RevocationList::new();
    for i in 0..1000u32 {
        let mut h = [0u8; 32];
        h[..4].copy_from_slice(&i.to_be_bytes());
        revoked.insert(TokenHash(h), NOW + 600);
    }
    let lock = Lock {
        id: LockId::parse("Lk7fQ2xW9aBcDeFgHiJkLm").unwrap(),
        revoked,
    };

    let holder = Ed25519KeyPair::from_seed_unchecked(&[0x77; 32]).unwrap();
    let holder_public: [u8; 32] = holder.public_key().as_ref().try_into().unwrap();
    let authenticator = SoftwareAuthenticator::from_pkcs8(
        &SoftwareAuthenticator::generate_pkcs8(&rng).unwrap(),
        "firstkey.example",
        &rng,
    )
    .unwrap();

    let bearer_claims = claims(None);
    let ed_claims = claims(Some(ConfirmationKey::Ed25519(holder_public)));
    let p256_claims = claims(Some(authenticator.confirmation_key()));
    let bearer = mint(&bearer_claims, &kid, &issuer).unwrap();
    let ed = mint(&ed_claims, &kid, &issuer).unwrap();
    let p256 = mint(&p256_claims, &kid, &issuer).unwrap();
    // What the server mints: the municipality's short issuer id (a number, V26), the responder's
    // and the lock's uuids (they travel as 16 bytes each), a P-256 `cnf` (the security key).
    let server_claims = Claims {
        issuer: "17".into(),
        subject: "8a3f0c2e-1b4d-4e6f-9a7b-0c1d2e3f4a5b".into(),
        audience: LockId::parse("5d1c9e7a-3b2f-8c4d-9e1f-2a3b4c5d6e7f").unwrap(),
        ..p256_claims.clone()
    };
    let server_token = mint(&server_claims, &kid, &issuer).unwrap();
    // The same under the municipality's slug, as minted for a lock whose bundle predates the
    // short issuer id.
    let slug_token = mint(
        &Claims {
            issuer: "demo-city".into(),
            ..server_claims.clone()
        },
        &kid,
        &issuer,
    )
    .unwrap();

    let ed_proof = Proof::sign_ed25519(
        &holder,
        &pop_message(&CHALLENGE, &lock.id, &token_hash(&ed)),
    )
    .to_cbor();
    let p256_proof = authenticator
        .assert(
            &pop_message(&CHALLENGE, &lock.id, &token_hash(&p256)),
            FLAG_USER_PRESENT,
            &rng,
        )
        .unwrap()
        .to_cbor();

    let bearer_options = VerifyOptions {
        require_proof_of_possession: false,
        ..VerifyOptions::default()
    };
    let no_proof = Presentation {
        challenge: &CHALLENGE,
        proof: None,
    };
    let with_ed_proof = Presentation {
        challenge: &CHALLENGE,
        proof: Some(&ed_proof),
    };
    let with_p256_proof = Presentation {
        challenge: &CHALLENGE,
        proof: Some(&p256_proof),
    };
    let options = VerifyOptions::default();
    assert!(verify(&bearer, &trust, &lock, &no_proof, NOW, &bearer_options).is_ok());
    assert!(verify(&ed, &trust, &lock, &with_ed_proof, NOW, &options).is_ok());
    assert!(verify(&p256, &trust, &lock, &with_p256_proof, NOW, &options).is_ok());

    // The floor: one raw ring Ed25519 verification of a message as long as the token's
    // Sig_structure (token length plus ~16 bytes of framing).
    let raw_message = vec![0x42u8; bearer.len() + 16];
    let raw_signature = issuer.sign(&raw_message);
    let raw_key = UnparsedPublicKey::new(&ED25519, issuer_public);

    // The JWT of the same claims.
    let jwt_header = {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        h.kid = Some("k1".into());
        h
    };
    let jwt_key = jsonwebtoken::EncodingKey::from_ed_der(pkcs8.as_ref());
    let jwt_of = |c: &Claims| jsonwebtoken::encode(&jwt_header, &jwt_claims(c), &jwt_key).unwrap();
    let jwt_bearer = jwt_of(&bearer_claims);
    let jwt_ed = jwt_of(&ed_claims);
    let jwt_p256 = jwt_of(&p256_claims);
    let jwt_server = jwt_of(&server_claims);
    let jwt_decoding = jsonwebtoken::DecodingKey::from_ed_components(&b64(&issuer_public)).unwrap();
    let mut jwt_validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    jwt_validation.set_audience(&["Lk7fQ2xW9aBcDeFgHiJkLm"]);
    jwt_validation.set_issuer(&["mun-042"]);
    jwt_validation.validate_exp = false; // the fixed NOW is in the past of the real clock
    jsonwebtoken::decode::<JwtClaims>(&jwt_bearer, &jwt_decoding, &jwt_validation).unwrap();

    let (raw_ns, verify_ns, ratio) = paired_ns(
        || {
            raw_key
                .verify(black_box(&raw_message), black_box(raw_signature.as_ref()))
                .unwrap();
        },
        || {
            verify(
                black_box(&bearer),
                &trust,
                &lock,
                &no_proof,
                NOW,
                &bearer_options,
            )
            .unwrap();
        },
    );
    let parse_ns = time_ns(|| {
        black_box(UnverifiedToken::parse(black_box(&bearer)).unwrap());
    });
    // A P-256 `cnf` stays compressed in the parsed token (it is decompressed at the proof step,
    // beside the ECDSA verification): parsing a P-256-cnf token against parsing the same token
    // with an Ed25519 `cnf`, paired rounds.
    let (parse_ed_ns, parse_p256_ns, parse_p256_ratio) = paired_ns(
        || {
            black_box(UnverifiedToken::parse(black_box(&ed)).unwrap());
        },
        || {
            black_box(UnverifiedToken::parse(black_box(&p256)).unwrap());
        },
    );
    let verify_ed_ns = time_ns(|| {
        verify(black_box(&ed), &trust, &lock, &with_ed_proof, NOW, &options).unwrap();
    });
    let verify_p256_ns = time_ns(|| {
        verify(
            black_box(&p256),
            &trust,
            &lock,
            &with_p256_proof,
            NOW,
            &options,
        )
        .unwrap();
    });
    let mint_ns = time_ns(|| {
        black_box(mint(black_box(&bearer_claims), &kid, &issuer).unwrap());
    });
    let jwt_verify_ns = time_ns(|| {
        jsonwebtoken::decode::<JwtClaims>(black_box(&jwt_bearer), &jwt_decoding, &jwt_validation)
            .unwrap();
    });

    println!();
    println!("firstkey override token (COSE_Sign1 + CWT, Ed25519 via ring)");
    println!(
        "  size, no cnf              {:>5} B   (target <= 220)",
        bearer.len()
    );
    println!("  size, Ed25519 cnf         {:>5} B", ed.len());
    println!(
        "  size, P-256 cnf           {:>5} B   (target <= 300)",
        p256.len()
    );
    println!(
        "  JWT, no cnf               {:>5} B   ratio JWT/CWT {:.2}x (target >= 2)",
        jwt_bearer.len(),
        jwt_bearer.len() as f64 / bearer.len() as f64
    );
    println!(
        "  JWT, Ed25519 cnf          {:>5} B   ratio {:.2}x",
        jwt_ed.len(),
        jwt_ed.len() as f64 / ed.len() as f64
    );
    println!(
        "  JWT, P-256 cnf            {:>5} B   ratio {:.2}x",
        jwt_p256.len(),
        jwt_p256.len() as f64 / p256.len() as f64
    );
    println!(
        "  server-shaped, P-256 cnf  {:>5} B   (short iss, uuid sub/aud as 16 B; target <= 240)",
        server_token.len()
    );
    println!(
        "    with the slug as iss    {:>5} B   (locks whose bundle predates the short id)",
        slug_token.len()
    );
    println!(
        "  JWT of the same claims    {:>5} B   ratio CWT/JWT {:.2}x (target <= 0.38)",
        jwt_server.len(),
        server_token.len() as f64 / jwt_server.len() as f64
    );
    println!("  mint (no cnf)             {:>8.2} us", mint_ns / 1e3);
    println!(
        "  raw ring Ed25519 verify   {:>8.2} us   (floor)",
        raw_ns / 1e3
    );
    println!(
        "  verify (no cnf)           {:>8.2} us   ratio verify/raw {:.3} (target <= 1.10)",
        verify_ns / 1e3,
        ratio
    );
    println!(
        "    of which parse + hash   {:>8.2} us   (all but the signature check)",
        parse_ns / 1e3
    );
    println!(
        "  parse, P-256 cnf          {:>8.2} us   against Ed25519 cnf {:.2} us: {:.2}x \
         ({:+.2} us; the point is decompressed at the proof step)",
        parse_p256_ns / 1e3,
        parse_ed_ns / 1e3,
        parse_p256_ratio,
        (parse_p256_ns - parse_ed_ns) / 1e3
    );
    println!("  verify + Ed25519 PoP      {:>8.2} us", verify_ed_ns / 1e3);
    println!(
        "  verify + P-256 WebAuthn   {:>8.2} us",
        verify_p256_ns / 1e3
    );
    println!(
        "  JWT verify (jsonwebtoken) {:>8.2} us",
        jwt_verify_ns / 1e3
    );
    println!();

    let mut c = Criterion::default().configure_from_args();
    c.bench_function("raw_ring_ed25519_verify", |b| {
        b.iter(|| raw_key.verify(black_box(&raw_message), black_box(raw_signature.as_ref())))
    });
    c.bench_function("verify_no_cnf", |b| {
        b.iter(|| {
            verify(
                black_box(&bearer),
                &trust,
                &lock,
                &no_proof,
                NOW,
                &bearer_options,
            )
        })
    });
    c.bench_function("verify_ed25519_pop", |b| {
        b.iter(|| verify(black_box(&ed), &trust, &lock, &with_ed_proof, NOW, &options))
    });
    c.bench_function("verify_p256_webauthn_pop", |b| {
        b.iter(|| {
            verify(
                black_box(&p256),
                &trust,
                &lock,
                &with_p256_proof,
                NOW,
                &options,
            )
        })
    });
    c.bench_function("mint_no_cnf", |b| {
        b.iter(|| mint(black_box(&bearer_claims), &kid, &issuer))
    });
    c.bench_function("jwt_verify", |b| {
        b.iter(|| {
            jsonwebtoken::decode::<JwtClaims>(
                black_box(&jwt_bearer),
                &jwt_decoding,
                &jwt_validation,
            )
        })
    });
    c.final_summary();
}
