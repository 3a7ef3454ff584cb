//! Verifying the `stripe-signature` header of a webhook delivery, as Stripe specifies it: the
//! header is `t=<unix seconds>,v1=<hex>[,v1=<hex>...]` (several `v1` values while a secret is
//! being rolled, plus schemes such as `v0` that are ignored); the signature is HMAC-SHA256,
//! keyed by the endpoint's secret, over `"{t}.{raw body}"`. A delivery is accepted when any
//! `v1` value matches (compared in constant time) and `t` is within five minutes of now.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a delivery's timestamp may be from now, in seconds (Stripe's default).
pub const TOLERANCE_SECS: i64 = 300;

/// Why a delivery is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `stripe-signature` header.
    #[error("the stripe-signature header is missing")]
    Missing,
    /// The header is not `t=...,v1=...`.
    #[error("the stripe-signature header is malformed: {0}")]
    Malformed(&'static str),
    /// No `v1` value matches the body.
    #[error("no v1 signature matches the payload")]
    Mismatch,
    /// The timestamp is more than the tolerance away from now.
    #[error("the signature's timestamp is {age} s from now (at most {TOLERANCE_SECS} s allowed)")]
    Stale {
        /// Seconds between the timestamp and now.
        age: i64,
    },
}

/// Checks `header` against `payload` with `secret`, at `now` (unix seconds).
pub fn verify(
    header: Option<&str>,
    payload: &[u8],
    secret: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp: Option<i64> = None;
    let mut candidates: Vec<Vec<u8>> = Vec::new();
    for part in header.split(',') {
        let Some((key, value)) = part.trim().split_once('=') else {
            return Err(SignatureError::Malformed("every item must be key=value"));
        };
        match key {
            "t" => {
                if timestamp.is_some() {
                    return Err(SignatureError::Malformed("more than one timestamp"));
                }
                timestamp = Some(
                    value
                        .parse()
                        .map_err(|_| SignatureError::Malformed("t is not a unix timestamp"))?,
                );
            }
            // A value that is not hex can match nothing; skip it rather than refuse the others.
            "v1" => candidates.extend(hex::decode(value).ok()),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed("no timestamp (t=)"))?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed("no v1 signature"));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    // `verify_slice` compares in constant time; every candidate is checked.
    let matched = candidates
        .iter()
        .fold(false, |any, c| mac.clone().verify_slice(c).is_ok() | any);
    if !matched {
        return Err(SignatureError::Mismatch);
    }
    let age = (now - timestamp).abs();
    if age > TOLERANCE_SECS {
        return Err(SignatureError::Stale { age });
    }
    Ok(())
}

/// The header Stripe would send for `payload` at `timestamp` (for tests and benchmarks).
pub fn sign(payload: &[u8], secret: &[u8], timestamp: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(payload);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_test_secret";
    const BODY: &[u8] = br#"{"id":"evt_1","type":"invoice.paid"}"#;
    const NOW: i64 = 1_800_000_000;

    /// Computed independently of `sign`, with Stripe's documented recipe.
    fn v1(payload: &[u8], secret: &[u8], t: i64) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(format!("{t}.{}", std::str::from_utf8(payload).unwrap()).as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn a_valid_signature_is_accepted() {
        let header = format!("t={NOW},v1={}", v1(BODY, SECRET, NOW));
        assert_eq!(verify(Some(&header), BODY, SECRET, NOW), Ok(()));
        assert_eq!(sign(BODY, SECRET, NOW), header);
        // Within the tolerance either way.
        assert_eq!(verify(Some(&header), BODY, SECRET, NOW + 300), Ok(()));
        assert_eq!(verify(Some(&header), BODY, SECRET, NOW - 300), Ok(()));
    }

    #[test]
    fn a_signature_made_with_another_secret_is_refused() {
        let header = format!("t={NOW},v1={}", v1(BODY, b"whsec_other", NOW));
        assert_eq!(
            verify(Some(&header), BODY, SECRET, NOW),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn a_stale_timestamp_is_refused_even_with_a_good_signature() {
        let t = NOW - 301;
        let header = format!("t={t},v1={}", v1(BODY, SECRET, t));
        assert_eq!(
            verify(Some(&header), BODY, SECRET, NOW),
            Err(SignatureError::Stale { age: 301 })
        );
        let t = NOW + 301;
        let header = format!("t={t},v1={}", v1(BODY, SECRET, t));
        assert!(matches!(
            verify(Some(&header), BODY, SECRET, NOW),
            Err(SignatureError::Stale { .. })
        ));
    }

    #[test]
    fn a_tampered_body_or_timestamp_is_refused() {
        let sig = v1(BODY, SECRET, NOW);
        let header = format!("t={NOW},v1={sig}");
        let tampered = br#"{"id":"evt_1","type":"invoice.paid" }"#;
        assert_eq!(
            verify(Some(&header), tampered, SECRET, NOW),
            Err(SignatureError::Mismatch)
        );
        let moved = format!("t={},v1={sig}", NOW + 1);
        assert_eq!(
            verify(Some(&moved), BODY, SECRET, NOW),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn any_of_several_v1_signatures_may_match() {
        let good = v1(BODY, SECRET, NOW);
        let old = v1(BODY, b"whsec_rolled_out", NOW);
        let header = format!("t={NOW},v1={old},v0=abc,v1=zz-not-hex,v1={good}");
        assert_eq!(verify(Some(&header), BODY, SECRET, NOW), Ok(()));
        let none = format!("t={NOW},v1={old},v1={}", "00".repeat(32));
        assert_eq!(
            verify(Some(&none), BODY, SECRET, NOW),
            Err(SignatureError::Mismatch)
        );
        // A v0 (test-mode) signature alone is not enough.
        let only_v0 = format!("t={NOW},v0={good}");
        assert!(matches!(
            verify(Some(&only_v0), BODY, SECRET, NOW),
            Err(SignatureError::Malformed(_))
        ));
    }

    #[test]
    fn a_missing_or_malformed_header_is_refused() {
        assert_eq!(
            verify(None, BODY, SECRET, NOW),
            Err(SignatureError::Missing)
        );
        let sig = v1(BODY, SECRET, NOW);
        for bad in [
            String::new(),
            format!("v1={sig}"),
            format!("t=yesterday,v1={sig}"),
            format!("t={NOW}"),
            format!("t={NOW},t={NOW},v1={sig}"),
            format!("t={NOW};v1={sig}"),
        ] {
            assert!(
                matches!(
                    verify(Some(&bad), BODY, SECRET, NOW),
                    Err(SignatureError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
    }
}
