//! The cost of authentication: verifying an access token (paid on every
//! authenticated request) and hashing a password with the default argon2id
//! parameters (paid on every login). `cargo bench -p agora-identity`; the figures
//! are in docs/security.md.

use std::hint::black_box;

use agora_identity::domain::Password;
use agora_identity::keys::KeyRing;
use agora_identity::password::PasswordHasher;
use agora_kernel::{Clock, Role, SessionId, SystemClock, UserId};
use agora_platform::auth::{AccessClaims, Authenticator};
use agora_platform::config::AuthConfig;
use criterion::{Criterion, criterion_group, criterion_main};

fn verify_access_token(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a directory");
    let config = AuthConfig::default();
    let keys = KeyRing::load_or_create(dir.path(), SystemClock.now(), 900_000).expect("keys");
    let authenticator = Authenticator::new(&config);
    authenticator.set_keys(keys.verification_keys().expect("public keys"));
    let iat = u64::try_from(SystemClock.now().as_millis() / 1000).expect("after 1970");
    let claims = AccessClaims {
        iss: config.issuer.clone(),
        aud: config.audience.clone(),
        sub: UserId::new().to_string(),
        sid: SessionId::new().to_string(),
        roles: vec![Role::Customer],
        jti: "bench".into(),
        iat,
        exp: iat + 3600,
    };
    let token = keys.sign(&claims).expect("signed");
    let public_keys = keys.verification_keys().expect("public keys");
    // First sight of a token: the signature and the claims are checked.
    c.bench_function("access token, first request (signature checked)", |b| {
        b.iter_batched(
            || {
                let fresh = Authenticator::new(&config);
                fresh.set_keys(public_keys.clone());
                fresh
            },
            |fresh| fresh.verify(black_box(&token)).expect("valid"),
            criterion::BatchSize::PerIteration,
        )
    });
    // Later requests with the same token: remembered.
    c.bench_function("access token, later requests (remembered)", |b| {
        b.iter(|| authenticator.verify(black_box(&token)).expect("valid"))
    });
}

/// The floor under the first request: one Ed25519 signature check over an
/// input the size of a token's header and claims, with nothing else around it.
fn ed25519_alone(c: &mut Criterion) {
    use ed25519_dalek::{Signer as _, SigningKey, Verifier as _};
    let key = SigningKey::from_bytes(&[7; 32]);
    let message = vec![b'x'; 300];
    let signature = key.sign(&message);
    let public = key.verifying_key();
    c.bench_function("Ed25519 signature check alone", |b| {
        b.iter(|| {
            public
                .verify(black_box(&message), black_box(&signature))
                .expect("valid")
        })
    });
    let bytes = public.to_bytes();
    c.bench_function("Ed25519 public key decompression", |b| {
        b.iter(|| ed25519_dalek::VerifyingKey::from_bytes(black_box(&bytes)).expect("valid"))
    });
}

fn hash_password(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let hasher = PasswordHasher::new(&AuthConfig::default().argon2).expect("parameters");
    let password = Password::new("correct horse battery staple".into());
    let mut group = c.benchmark_group("argon2id");
    group.sample_size(10);
    group.bench_function("hash a password (19 MiB, 2 passes, 1 lane)", |b| {
        b.iter(|| runtime.block_on(hasher.hash(&password)).expect("hashed"))
    });
    group.finish();
}

criterion_group!(benches, verify_access_token, ed25519_alone, hash_password);
criterion_main!(benches);
