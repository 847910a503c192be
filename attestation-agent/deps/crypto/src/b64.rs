//! base64url (RFC 4648 §5) as JOSE uses it: no padding on output; on input the
//! padding is tolerated, but every other deviation is an error. Lengths are
//! checked against a limit before anything is decoded.

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;

use crate::{CryptoError, Result};

const URL_LENIENT_PAD: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_encode_padding(false).with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Encode without padding.
pub(crate) fn encode(data: &[u8]) -> String {
    URL_LENIENT_PAD.encode(data)
}

/// Decode `s` (field `what`), refusing inputs whose decoded size would exceed `limit`.
pub(crate) fn decode(what: &'static str, s: &str, limit: usize) -> Result<Vec<u8>> {
    // 4 chars carry 3 bytes; check before allocating.
    let approx = s.len() / 4 * 3 + 3;
    if approx > limit + 3 {
        return Err(CryptoError::TooLarge { what, len: approx, limit });
    }
    let out = URL_LENIENT_PAD.decode(s).map_err(|_| CryptoError::Base64(what))?;
    if out.len() > limit {
        return Err(CryptoError::TooLarge { what, len: out.len(), limit });
    }
    Ok(out)
}

/// Decode a field that must have exactly `N` bytes.
pub(crate) fn decode_exact<const N: usize>(what: &'static str, s: &str) -> Result<[u8; N]> {
    let v = decode(what, s, N.max(64))?;
    v.as_slice().try_into().map_err(|_| CryptoError::BadLength { what, len: v.len(), expected: N })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_padding_tolerated() {
        let e = encode(b"ab");
        assert_eq!(e, "YWI");
        assert_eq!(decode("x", "YWI", 10).unwrap(), b"ab");
        assert_eq!(decode("x", "YWI=", 10).unwrap(), b"ab");
    }

    #[test]
    fn rejects_standard_alphabet_and_garbage() {
        assert!(matches!(decode("x", "a+b/", 10), Err(CryptoError::Base64("x"))));
        assert!(matches!(decode("x", "!!!!", 10), Err(CryptoError::Base64("x"))));
        assert!(matches!(decode("x", "Y", 10), Err(CryptoError::Base64("x"))));
    }

    #[test]
    fn refuses_oversized_before_decoding() {
        let big = "A".repeat(4000);
        assert!(matches!(decode("ct", &big, 100), Err(CryptoError::TooLarge { what: "ct", .. })));
    }

    #[test]
    fn exact_length_enforced() {
        assert!(decode_exact::<12>("iv", &encode(&[0u8; 12])).is_ok());
        assert!(matches!(
            decode_exact::<12>("iv", &encode(&[0u8; 13])),
            Err(CryptoError::BadLength { len: 13, expected: 12, .. })
        ));
    }
}
