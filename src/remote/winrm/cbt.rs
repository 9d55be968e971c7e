//! Channel binding for NTLM over HTTPS ("Extended Protection for
//! Authentication"): the NTLM proof names the TLS server certificate it was
//! computed for, so a WinRM listener with `CbtHardeningLevel = Strict`
//! accepts the login and a TLS man-in-the-middle cannot relay it.
//!
//! The value is the MD5 of a `gss_channel_bindings_struct` (RFC 2744) with
//! empty addresses and application data `tls-server-end-point:` + the
//! certificate's hash (RFC 5929): the hash of its signature algorithm, with
//! MD5 and SHA-1 raised to SHA-256.

use md5::{Digest, Md5};
use sha2::{Sha256, Sha384, Sha512};

/// MsvAvChannelBindings: the 16 bytes for the NTLMv2 response's AV pairs.
pub fn tls_channel_bindings(server_cert_der: &[u8]) -> [u8; 16] {
    let mut app = b"tls-server-end-point:".to_vec();
    app.extend_from_slice(&certificate_hash(server_cert_der));
    // initiator addrtype, address length, acceptor addrtype, address length
    let mut s = vec![0u8; 16];
    s.extend_from_slice(&(app.len() as u32).to_le_bytes());
    s.extend_from_slice(&app);
    Md5::digest(&s).into()
}

/// RFC 5929 section 4.1: the certificate hashed with its signature's hash.
pub fn certificate_hash(der: &[u8]) -> Vec<u8> {
    match signature_hash(der) {
        Hash::Sha384 => Sha384::digest(der).to_vec(),
        Hash::Sha512 => Sha512::digest(der).to_vec(),
        Hash::Sha256 => Sha256::digest(der).to_vec(),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

const SHA384_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c];
const SHA512_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d];
const RSA_PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
const ECDSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
const ECDSA_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04];
/// The hash OIDs an RSASSA-PSS parameter block names.
const SHA384: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
const SHA512: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03];

/// SHA-256 for everything else, as RFC 5929 says for MD5 and SHA-1 and as
/// Windows does for algorithms the RFC does not cover.
fn signature_hash(cert: &[u8]) -> Hash {
    let Some((oid, params)) = signature_algorithm(cert) else {
        return Hash::Sha256;
    };
    let names = |h: &[u8]| params.windows(h.len()).any(|w| w == h);
    match oid {
        o if o == SHA384_RSA || o == ECDSA_SHA384 => Hash::Sha384,
        o if o == SHA512_RSA || o == ECDSA_SHA512 => Hash::Sha512,
        o if o == RSA_PSS && names(SHA384) => Hash::Sha384,
        o if o == RSA_PSS && names(SHA512) => Hash::Sha512,
        _ => Hash::Sha256,
    }
}

/// Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }:
/// the signature algorithm's OID and whatever parameters follow it.
fn signature_algorithm(cert: &[u8]) -> Option<(&[u8], &[u8])> {
    let (0x30, body, _) = der(cert)? else {
        return None;
    };
    let (_, _, after_tbs) = der(body)?;
    let (0x30, alg, _) = der(after_tbs)? else {
        return None;
    };
    match der(alg)? {
        (0x06, oid, params) => Some((oid, params)),
        _ => None,
    }
}

/// One DER element: (tag, contents, what follows).
fn der(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = len << 8 | usize::from(*b.get(2 + i)?);
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    Some((tag, b.get(header..end)?, b.get(end..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let params = rcgen::CertificateParams::new(vec!["win.example".to_string()]).unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_hash_follows_the_signature_algorithm() {
        let p256 = cert(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(signature_hash(&p256), Hash::Sha256);
        assert_eq!(certificate_hash(&p256), Sha256::digest(&p256).to_vec());
        let p384 = cert(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(signature_hash(&p384), Hash::Sha384);
        assert_eq!(certificate_hash(&p384).len(), 48);
        let ed = cert(&rcgen::PKCS_ED25519);
        assert_eq!(signature_hash(&ed), Hash::Sha256);
        assert_eq!(signature_hash(b"\x30\x03\x02\x01"), Hash::Sha256, "garbage");
    }

    #[test]
    fn bindings_match_an_independent_computation() {
        // Computed with Python's hashlib from the RFC 2744/5929 layout:
        // md5(b"\0"*16 + struct.pack("<I", len(app)) + app) with
        // app = b"tls-server-end-point:" + sha256(b"not really a certificate").
        let v = tls_channel_bindings(b"not really a certificate");
        let hex: String = v.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, EXPECTED);
    }

    const EXPECTED: &str = "5b7c0248941df6f2a048c6a7fc8848e6";
}
