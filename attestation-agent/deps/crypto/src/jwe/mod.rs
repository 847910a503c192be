//! JSON Web Encryption (RFC 7516): parse (compact, flattened and general JSON),
//! decrypt with one private key, and encrypt for one or more recipients.
//!
//! Content encryption is A256GCM only, with AAD = ASCII(BASE64URL(protected)),
//! or that followed by `.` and the `aad` member when present (RFC 7516 §5.1).
//! Never returns unauthenticated plaintext; refuses `zip`, `crit`, header names
//! that appear in more than one header, and any size beyond the limits in
//! [`DecryptOptions`] before decoding it.

mod keywrap;

use serde::Deserialize;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::keys::KeyAlg;
use crate::{aead, b64, rng, CryptoError, PrivateKey, PublicKey, Result};

use keywrap::CEK_LEN;

/// The only content encryption algorithm supported.
pub const ENC_A256GCM: &str = "A256GCM";

/// Limits and policy for [`decrypt_with`].
#[derive(Debug, Clone)]
pub struct DecryptOptions {
    /// Allow `alg` `RSA1_5`. Off by default: PKCS#1 v1.5 decryption is a padding
    /// oracle (Bleichenbacher; Marvin for timing). When on, a padding failure is
    /// replaced by a random CEK (RFC 7516 §11.5) so it surfaces only as a GCM
    /// authentication failure, but the RSA operation itself is still timing
    /// sensitive. Enable only for peers that cannot do RSA-OAEP.
    pub allow_rsa1_5: bool,
    /// Largest serialized JWE accepted, in bytes.
    pub max_len: usize,
    /// Most recipients examined in a general JSON JWE.
    pub max_recipients: usize,
}

impl Default for DecryptOptions {
    fn default() -> Self {
        DecryptOptions { allow_rsa1_5: false, max_len: 4 << 20, max_recipients: 64 }
    }
}

/// How [`encrypt`] serializes its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serialization {
    /// `BASE64URL(protected).key.iv.ciphertext.tag` — one recipient, no `aad`.
    Compact,
    /// Flattened JSON — one recipient; `alg`/`epk` go into the protected header.
    Flattened,
    /// General JSON — any number of recipients; `enc` protected, `alg`/`epk` per recipient.
    General,
}

/// One recipient for [`encrypt`].
#[derive(Debug, Clone, Copy)]
pub struct Recipient<'a> {
    /// The recipient's public key.
    pub key: &'a PublicKey,
    /// Key management algorithm; must fit the key type.
    pub alg: KeyAlg,
}

impl<'a> Recipient<'a> {
    /// A recipient with the key's default algorithm (RSA-OAEP-256 / ECDH-ES+A256KW).
    pub fn new(key: &'a PublicKey) -> Self {
        Recipient { key, alg: key.default_alg() }
    }
}

/// What a recipient of a JWE declares (for error messages and key selection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientInfo {
    /// The `alg` header value, as found.
    pub alg: String,
    /// The `kid` header value, if any.
    pub kid: Option<String>,
}

const MAX_HEADER_B64: usize = 16 * 1024;
const MAX_ENCRYPTED_KEY: usize = crate::keys::RSA_MAX_BITS / 8;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRecipient {
    header: Option<Map<String, Value>>,
    encrypted_key: Option<String>,
}

#[derive(Deserialize)]
struct JsonJwe {
    protected: Option<String>,
    unprotected: Option<Map<String, Value>>,
    header: Option<Map<String, Value>>,
    encrypted_key: Option<String>,
    recipients: Option<Vec<JsonRecipient>>,
    aad: Option<String>,
    iv: Option<String>,
    ciphertext: Option<String>,
    tag: Option<String>,
}

/// A parsed JWE: headers merged per recipient, body fields still encoded.
struct Parsed {
    protected_b64: String,
    aad_b64: Option<String>,
    recipients: Vec<ParsedRecipient>,
    iv: String,
    ciphertext: String,
    tag: String,
}

struct ParsedRecipient {
    /// protected ∪ unprotected ∪ per-recipient header (disjoint by RFC 7516 §7.2.1).
    header: Map<String, Value>,
    encrypted_key: String,
}

fn malformed(msg: impl Into<String>) -> CryptoError {
    CryptoError::MalformedJwe(msg.into())
}

fn merge_into(dst: &mut Map<String, Value>, src: &Map<String, Value>) -> Result<()> {
    for (k, v) in src {
        if dst.insert(k.clone(), v.clone()).is_some() {
            return Err(CryptoError::UnsupportedHeader(format!("header member {k:?} appears in more than one header")));
        }
    }
    Ok(())
}

fn decode_protected(protected_b64: &str) -> Result<Map<String, Value>> {
    if protected_b64.is_empty() {
        return Ok(Map::new());
    }
    if protected_b64.len() > MAX_HEADER_B64 {
        return Err(CryptoError::TooLarge {
            what: "JWE protected header",
            len: protected_b64.len(),
            limit: MAX_HEADER_B64,
        });
    }
    let raw = b64::decode("protected", protected_b64, MAX_HEADER_B64)?;
    serde_json::from_slice(&raw).map_err(|e| malformed(format!("protected header is not a JSON object: {e}")))
}

fn parse(input: &[u8], opts: &DecryptOptions) -> Result<Parsed> {
    if input.len() > opts.max_len {
        return Err(CryptoError::TooLarge { what: "JWE", len: input.len(), limit: opts.max_len });
    }
    let text = std::str::from_utf8(input).map_err(|_| malformed("not UTF-8"))?;
    let text = text.trim();
    if !text.starts_with('{') {
        return parse_compact(text);
    }
    let j: JsonJwe = serde_json::from_str(text).map_err(|e| malformed(format!("JSON: {e}")))?;
    let protected_b64 = j.protected.unwrap_or_default();
    let protected = decode_protected(&protected_b64)?;
    let mut shared = protected;
    if let Some(u) = &j.unprotected {
        merge_into(&mut shared, u)?;
    }
    let raw_recipients = match (j.recipients, j.header, j.encrypted_key) {
        (Some(r), None, None) => r,
        (None, header, encrypted_key) => vec![JsonRecipient { header, encrypted_key }],
        // go-jose (and so skopeo/ocicrypt) writes general JSON with the first
        // recipient repeated in flattened form. Tolerated only when it is an
        // exact copy, so no header can hide there.
        (Some(r), header, encrypted_key)
            if r.first().is_some_and(|first| {
                first.encrypted_key == encrypted_key && (header.is_none() || first.header == header)
            }) =>
        {
            r
        }
        (Some(_), _, _) => {
            return Err(malformed(
                "both `recipients` and a flattened `header`/`encrypted_key` that differs from the first recipient",
            ))
        }
    };
    if raw_recipients.is_empty() {
        return Err(malformed("no recipients"));
    }
    if raw_recipients.len() > opts.max_recipients {
        return Err(CryptoError::TooLarge {
            what: "JWE recipients",
            len: raw_recipients.len(),
            limit: opts.max_recipients,
        });
    }
    let mut recipients = Vec::with_capacity(raw_recipients.len());
    for r in raw_recipients {
        let mut header = shared.clone();
        if let Some(h) = &r.header {
            merge_into(&mut header, h)?;
        }
        recipients.push(ParsedRecipient { header, encrypted_key: r.encrypted_key.unwrap_or_default() });
    }
    let field = |v: Option<String>, name: &str| v.ok_or_else(|| malformed(format!("missing {name}")));
    Ok(Parsed {
        protected_b64,
        aad_b64: j.aad,
        recipients,
        iv: field(j.iv, "iv")?,
        ciphertext: field(j.ciphertext, "ciphertext")?,
        tag: field(j.tag, "tag")?,
    })
}

fn parse_compact(text: &str) -> Result<Parsed> {
    let parts: Vec<&str> = text.split('.').collect();
    let [protected, encrypted_key, iv, ciphertext, tag] = parts.as_slice() else {
        return Err(malformed(format!(
            "neither JSON nor compact serialization ({} dot-separated parts, expected 5)",
            parts.len()
        )));
    };
    let header = decode_protected(protected)?;
    Ok(Parsed {
        protected_b64: protected.to_string(),
        aad_b64: None,
        recipients: vec![ParsedRecipient { header, encrypted_key: encrypted_key.to_string() }],
        iv: iv.to_string(),
        ciphertext: ciphertext.to_string(),
        tag: tag.to_string(),
    })
}

fn header_str<'a>(h: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>> {
    match h.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(malformed(format!("header {name:?} must be a string"))),
    }
}

/// Checks shared by every recipient: `enc`, `zip`, `crit`.
fn check_common(h: &Map<String, Value>) -> Result<()> {
    match header_str(h, "enc")? {
        Some(ENC_A256GCM) => {}
        Some(other) => return Err(CryptoError::UnsupportedEnc(other.into())),
        None => return Err(malformed("missing enc")),
    }
    if h.contains_key("zip") {
        return Err(CryptoError::UnsupportedHeader("zip (compressed JWE plaintext)".into()));
    }
    if h.contains_key("crit") {
        return Err(CryptoError::UnsupportedHeader("crit (no extensions are understood)".into()));
    }
    Ok(())
}

/// List the recipients of a JWE (their `alg` and `kid`) without decrypting.
pub fn recipients(input: &[u8]) -> Result<Vec<RecipientInfo>> {
    let p = parse(input, &DecryptOptions::default())?;
    p.recipients
        .iter()
        .map(|r| {
            Ok(RecipientInfo {
                alg: header_str(&r.header, "alg")?.unwrap_or("").to_string(),
                kid: header_str(&r.header, "kid")?.map(str::to_string),
            })
        })
        .collect()
}

/// Decrypt with default options (RSA1_5 refused).
pub fn decrypt(input: &[u8], key: &PrivateKey) -> Result<Zeroizing<Vec<u8>>> {
    decrypt_with(input, key, &DecryptOptions::default())
}

/// Decrypt `input` with `key`: every recipient whose `alg` fits the key type is
/// tried in order; the first whose key unwrap succeeds decides the outcome.
pub fn decrypt_with(input: &[u8], key: &PrivateKey, opts: &DecryptOptions) -> Result<Zeroizing<Vec<u8>>> {
    let p = parse(input, opts)?;
    let iv = b64::decode_exact::<{ aead::IV_LEN }>("iv", &p.iv)?;
    let tag = b64::decode_exact::<{ aead::TAG_LEN }>("tag", &p.tag)?;
    let ciphertext = b64::decode("ciphertext", &p.ciphertext, opts.max_len)?;
    let aad = match &p.aad_b64 {
        None => p.protected_b64.clone().into_bytes(),
        Some(a) => {
            // Validate it is base64url, but authenticate the encoded form.
            b64::decode("aad", a, opts.max_len)?;
            format!("{}.{}", p.protected_b64, a).into_bytes()
        }
    };

    let mut seen_algs = Vec::new();
    let mut last_err: Option<CryptoError> = None;
    for r in &p.recipients {
        check_common(&r.header)?;
        let alg_name = header_str(&r.header, "alg")?.unwrap_or("");
        seen_algs.push(alg_name.to_string());
        let Some(alg) = KeyAlg::parse(alg_name) else {
            last_err.get_or_insert(CryptoError::UnsupportedAlg(alg_name.into()));
            continue;
        };
        let cek = match (key, alg) {
            (_, KeyAlg::Rsa1_5) if !opts.allow_rsa1_5 => {
                last_err = Some(CryptoError::Rsa15Refused);
                continue;
            }
            (PrivateKey::Rsa(k), KeyAlg::RsaOaep | KeyAlg::RsaOaep256 | KeyAlg::Rsa1_5) => {
                let ek = b64::decode("encrypted_key", &r.encrypted_key, MAX_ENCRYPTED_KEY)?;
                keywrap::unwrap_rsa(k, alg, &ek)
            }
            (PrivateKey::P256(k), KeyAlg::EcdhEsA256kw) => {
                let ek = b64::decode("encrypted_key", &r.encrypted_key, MAX_ENCRYPTED_KEY)?;
                keywrap::unwrap_ecdh(k, &r.header, &ek)
            }
            _ => continue,
        };
        let cek = match cek {
            Ok(c) => c,
            Err(e) => {
                last_err = Some(e);
                continue;
            }
        };
        match aead::open(&cek, &iv, &ciphertext, &tag, &aad) {
            Ok(pt) => return Ok(pt),
            // A random CEK from a failed RSA1_5 unwrap lands here; another
            // recipient may still be ours.
            Err(e) if alg == KeyAlg::Rsa1_5 => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(match last_err {
        Some(e) => e,
        None => CryptoError::NoMatchingRecipient {
            key: match key {
                PrivateKey::Rsa(_) => "RSA",
                PrivateKey::P256(_) => "EC P-256",
            },
            recipients: seen_algs.join(", "),
        },
    })
}

/// Encrypt `plaintext` (A256GCM) for `recipients`.
///
/// `aad`, when given, is carried as the `aad` member (JSON serializations only).
/// Returns the serialized JWE (JSON text, or the compact string).
pub fn encrypt(
    plaintext: &[u8],
    recipients: &[Recipient<'_>],
    serialization: Serialization,
    aad: Option<&[u8]>,
) -> Result<String> {
    if recipients.is_empty() {
        return Err(malformed("encrypt: no recipients"));
    }
    if serialization == Serialization::Compact && aad.is_some() {
        return Err(malformed("compact serialization cannot carry aad"));
    }
    let cek = Zeroizing::new(rng::array::<CEK_LEN>()?);
    let mut wrapped = Vec::with_capacity(recipients.len());
    for r in recipients {
        wrapped.push(keywrap::wrap(r.key, r.alg, &cek)?);
    }
    // Compact and flattened carry exactly one recipient.
    let single = match (serialization, wrapped.as_slice()) {
        (Serialization::General, _) => None,
        (_, [one]) => Some(one),
        (_, many) => {
            return Err(malformed(format!(
                "{serialization:?} serialization carries exactly one recipient, got {}",
                many.len()
            )))
        }
    };

    let mut protected = Map::new();
    protected.insert("enc".into(), Value::String(ENC_A256GCM.into()));
    if let Some((_, h)) = single {
        // Single recipient: protect alg (and epk) too.
        for (k, v) in h {
            protected.insert(k.clone(), v.clone());
        }
    }
    let protected_b64 = b64::encode(&serde_json::to_vec(&protected).map_err(|e| malformed(format!("header: {e}")))?);
    let aad_b64 = aad.map(b64::encode);
    let gcm_aad = match &aad_b64 {
        None => protected_b64.clone(),
        Some(a) => format!("{protected_b64}.{a}"),
    };
    let sealed = aead::seal(&cek[..], plaintext, gcm_aad.as_bytes())?;
    let (iv, ct, tag) = (b64::encode(&sealed.iv), b64::encode(&sealed.ciphertext), b64::encode(&sealed.tag));

    let mut out = Map::new();
    match single {
        Some((ek, _)) if serialization == Serialization::Compact => {
            let ek = b64::encode(ek);
            return Ok(format!("{protected_b64}.{ek}.{iv}.{ct}.{tag}"));
        }
        Some((ek, _)) => {
            out.insert("protected".into(), protected_b64.into());
            out.insert("encrypted_key".into(), b64::encode(ek).into());
        }
        None => {
            out.insert("protected".into(), protected_b64.into());
            let list: Vec<Value> = wrapped
                .iter()
                .map(
                    |(ek, h)| serde_json::json!({"header": Value::Object(h.clone()), "encrypted_key": b64::encode(ek)}),
                )
                .collect();
            out.insert("recipients".into(), Value::Array(list));
        }
    }
    if let Some(a) = aad_b64 {
        out.insert("aad".into(), a.into());
    }
    out.insert("iv".into(), iv.into());
    out.insert("ciphertext".into(), ct.into());
    out.insert("tag".into(), tag.into());
    serde_json::to_string(&Value::Object(out)).map_err(|e| malformed(format!("serialize: {e}")))
}

#[cfg(test)]
mod tests;
