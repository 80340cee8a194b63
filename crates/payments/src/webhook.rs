//! Webhook signatures: `Agora-Signature: t=<unix seconds>,v1=<hex>`, where the hex
//! is HMAC-SHA256 of `"<t>.<body>"` under the endpoint's secret.
//!
//! Signing the timestamp with the body lets the receiver refuse a captured
//! webhook replayed later: a signature older (or newer) than the tolerance is
//! refused even though it is genuine. Several `v1` entries may appear while a
//! secret is being rotated; one matching is enough. Comparison is constant time
//! (`Mac::verify_slice`).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "agora-signature";

/// How far a signature's time may be from the receiver's clock, in seconds.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

/// Why a webhook signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The header is missing or not `t=…,v1=…`.
    #[error("the signature header is malformed")]
    Malformed,
    /// The signed time is outside the tolerance window.
    #[error("the signature is too old or from the future")]
    OutsideTolerance,
    /// No `v1` entry matches the body under the secret.
    #[error("no signature matches")]
    Mismatch,
}

/// The header value for `body` sent at `timestamp` (Unix seconds).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

/// Checks `header` against `body` at `now` (Unix seconds).
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => {
                timestamp = Some(t.parse::<i64>().map_err(|_| SignatureError::Malformed)?);
            }
            Some(("v1", v)) => {
                signatures.push(hex::decode(v).map_err(|_| SignatureError::Malformed)?);
            }
            // Other schemes may appear later; they are not ours to check.
            Some(_) => {}
            None => return Err(SignatureError::Malformed),
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if now.abs_diff(timestamp) > tolerance_secs.unsigned_abs() {
        return Err(SignatureError::OutsideTolerance);
    }
    if signatures
        .iter()
        .any(|s| mac(secret, timestamp, body).verify_slice(s).is_ok())
    {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_test";
    const BODY: &[u8] = br#"{"id":"evt_1","type":"payment.captured"}"#;
    const NOW: i64 = 1_795_450_000;

    #[test]
    fn a_signed_body_verifies_within_the_window() {
        let header = sign(SECRET, NOW, BODY);
        assert!(header.starts_with(&format!("t={NOW},v1=")));
        assert_eq!(verify(SECRET, &header, BODY, NOW, 300), Ok(()));
        assert_eq!(verify(SECRET, &header, BODY, NOW + 300, 300), Ok(()));
        assert_eq!(verify(SECRET, &header, BODY, NOW - 300, 300), Ok(()));
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_time_dot_body() {
        let header = sign(b"Jefe", 0, b"what do ya want for nothing?");
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(b"Jefe").expect("a key");
        mac.update(b"0.what do ya want for nothing?");
        let expected = hex::encode(mac.finalize().into_bytes());
        assert_eq!(header, format!("t=0,v1={expected}"));
        // The primitive itself, against RFC 4231 test case 2.
        let mut plain = <Hmac<Sha256> as Mac>::new_from_slice(b"Jefe").expect("a key");
        plain.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(plain.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn tampering_replays_and_garbage_are_refused() {
        let header = sign(SECRET, NOW, BODY);
        assert_eq!(
            verify(
                SECRET,
                &header,
                br#"{"id":"evt_1","type":"payment.refunded"}"#,
                NOW,
                300
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"another secret", &header, BODY, NOW, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(SECRET, &header, BODY, NOW + 301, 300),
            Err(SignatureError::OutsideTolerance),
            "a replay after the window"
        );
        let shifted = header.replace(&format!("t={NOW}"), &format!("t={}", NOW + 1));
        assert_eq!(
            verify(SECRET, &shifted, BODY, NOW, 300),
            Err(SignatureError::Mismatch)
        );
        for bad in ["", "t=1", "v1=00", "t=x,v1=00", "t=1,v1=zz", "garbage"] {
            assert_eq!(
                verify(SECRET, bad, BODY, NOW, 300),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn one_matching_signature_of_several_is_enough() {
        let old = sign(b"old secret", NOW, BODY);
        let new = sign(SECRET, NOW, BODY);
        let both = format!(
            "{old},{}",
            new.split_once(',').map(|(_, v)| v).unwrap_or_default()
        );
        assert_eq!(verify(SECRET, &both, BODY, NOW, 300), Ok(()));
        assert_eq!(verify(b"old secret", &both, BODY, NOW, 300), Ok(()));
    }
}
