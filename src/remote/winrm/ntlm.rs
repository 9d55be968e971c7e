//! NTLMv2 client (MS-NLMP): the three handshake messages and the session
//! security (sign and seal) WinRM needs to encrypt its messages on plain HTTP.

use md5::{Digest, Md5};

pub const NEGOTIATE_UNICODE: u32 = 0x0000_0001;
pub const REQUEST_TARGET: u32 = 0x0000_0004;
pub const NEGOTIATE_SIGN: u32 = 0x0000_0010;
pub const NEGOTIATE_SEAL: u32 = 0x0000_0020;
pub const NEGOTIATE_NTLM: u32 = 0x0000_0200;
pub const NEGOTIATE_ALWAYS_SIGN: u32 = 0x0000_8000;
pub const NEGOTIATE_EXTENDED_SESSIONSECURITY: u32 = 0x0008_0000;
pub const NEGOTIATE_TARGET_INFO: u32 = 0x0080_0000;
pub const NEGOTIATE_VERSION: u32 = 0x0200_0000;
pub const NEGOTIATE_128: u32 = 0x2000_0000;
pub const NEGOTIATE_KEY_EXCH: u32 = 0x4000_0000;
pub const NEGOTIATE_56: u32 = 0x8000_0000;

const SIGNATURE: &[u8; 8] = b"NTLMSSP\0";
const AV_EOL: u16 = 0;
const AV_FLAGS: u16 = 6;
const AV_TIMESTAMP: u16 = 7;
const AV_TARGET_NAME: u16 = 0x09;
const AV_CHANNEL_BINDINGS: u16 = 0x0a;
/// MsvAvFlags bit: the AUTHENTICATE message carries a MIC.
const AV_FLAG_MIC: u32 = 0x2;

/// What the client asks for: NTLMv2 with 128-bit key exchange, signing and sealing.
const CLIENT_FLAGS: u32 = NEGOTIATE_UNICODE
    | REQUEST_TARGET
    | NEGOTIATE_SIGN
    | NEGOTIATE_SEAL
    | NEGOTIATE_NTLM
    | NEGOTIATE_ALWAYS_SIGN
    | NEGOTIATE_EXTENDED_SESSIONSECURITY
    | NEGOTIATE_TARGET_INFO
    | NEGOTIATE_VERSION
    | NEGOTIATE_128
    | NEGOTIATE_KEY_EXCH
    | NEGOTIATE_56;

/// Windows 10, NTLM revision 15: the version Windows clients send.
const VERSION: [u8; 8] = [10, 0, 0x61, 0x4a, 0, 0, 0, 15];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NtlmError {
    #[error("malformed NTLM {0} message")]
    Malformed(&'static str),
    #[error("the server's NTLM challenge does not offer {0}")]
    Unsupported(&'static str),
    #[error("an NTLM-sealed message from the server failed its signature check")]
    BadSignature,
    #[error("the server's NTLM challenge carries so much target info that the answer would not fit its 64 KiB fields")]
    TooLong,
}

/// RC4, the cipher of NTLM sealing; its state runs on across messages.
pub struct Rc4 {
    s: [u8; 256],
    i: u8,
    j: u8,
}

impl Rc4 {
    pub fn new(key: &[u8]) -> Self {
        let mut s = [0u8; 256];
        for (i, b) in s.iter_mut().enumerate() {
            *b = i as u8;
        }
        let mut j: u8 = 0;
        for i in 0..256 {
            j = j.wrapping_add(s[i]).wrapping_add(key[i % key.len()]);
            s.swap(i, j as usize);
        }
        Rc4 { s, i: 0, j: 0 }
    }

    pub fn apply(&mut self, data: &mut [u8]) {
        for b in data.iter_mut() {
            self.i = self.i.wrapping_add(1);
            self.j = self.j.wrapping_add(self.s[self.i as usize]);
            self.s.swap(self.i as usize, self.j as usize);
            let k =
                self.s[(self.s[self.i as usize].wrapping_add(self.s[self.j as usize])) as usize];
            *b ^= k;
        }
    }
}

pub fn md5(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

pub fn hmac_md5(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..16].copy_from_slice(&md5(&[key]));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let mut inner = vec![ipad.as_slice()];
    inner.extend_from_slice(parts);
    let ih = md5(&inner);
    md5(&[&opad, &ih])
}

pub fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// NTOWFv2: HMAC_MD5(MD4(UNICODE(password)), UNICODE(UPPER(user) + domain)).
pub fn ntowfv2(password: &str, user: &str, domain: &str) -> [u8; 16] {
    use md4::Md4;
    let nt: [u8; 16] = Md4::digest(utf16le(password)).into();
    hmac_md5(&nt, &[&utf16le(&(user.to_uppercase() + domain))])
}

/// The four keys of one direction pair (MS-NLMP 3.4.5.2 and 3.4.5.3).
fn derive(session_key: &[u8; 16], what: &str) -> [u8; 16] {
    let magic = format!("session key to {what} key magic constant\0");
    md5(&[session_key, magic.as_bytes()])
}

/// Session security after the handshake: seals what the client sends and
/// unseals what the server answers, each direction with its own RC4 stream
/// and sequence number (connection-oriented mode).
pub struct Session {
    send_sign: [u8; 16],
    recv_sign: [u8; 16],
    send_seal: Rc4,
    recv_seal: Rc4,
    send_seq: u32,
    recv_seq: u32,
}

impl Session {
    pub fn client(exported_session_key: &[u8; 16]) -> Self {
        let k = exported_session_key;
        Session {
            send_sign: derive(k, "client-to-server signing"),
            recv_sign: derive(k, "server-to-client signing"),
            send_seal: Rc4::new(&derive(k, "client-to-server sealing")),
            recv_seal: Rc4::new(&derive(k, "server-to-client sealing")),
            send_seq: 0,
            recv_seq: 0,
        }
    }

    /// SEAL: returns the 16-byte signature and the sealed message.
    pub fn seal(&mut self, message: &[u8]) -> ([u8; 16], Vec<u8>) {
        let seq = self.send_seq;
        self.send_seq = self.send_seq.wrapping_add(1);
        let mut sealed = message.to_vec();
        self.send_seal.apply(&mut sealed);
        let sig = signature(&self.send_sign, &mut self.send_seal, seq, message);
        (sig, sealed)
    }

    /// UNSEAL and verify: the server's signature must match the plaintext.
    pub fn unseal(&mut self, sig: &[u8], sealed: &[u8]) -> Result<Vec<u8>, NtlmError> {
        let seq = self.recv_seq;
        self.recv_seq = self.recv_seq.wrapping_add(1);
        let mut plain = sealed.to_vec();
        self.recv_seal.apply(&mut plain);
        let expected = signature(&self.recv_sign, &mut self.recv_seal, seq, &plain);
        if sig != expected {
            return Err(NtlmError::BadSignature);
        }
        Ok(plain)
    }
}

fn signature(sign_key: &[u8; 16], seal: &mut Rc4, seq: u32, message: &[u8]) -> [u8; 16] {
    let mac = hmac_md5(sign_key, &[&seq.to_le_bytes(), message]);
    let mut checksum = [0u8; 8];
    checksum.copy_from_slice(&mac[..8]);
    seal.apply(&mut checksum);
    let mut sig = [0u8; 16];
    sig[..4].copy_from_slice(&1u32.to_le_bytes());
    sig[4..12].copy_from_slice(&checksum);
    sig[12..].copy_from_slice(&seq.to_le_bytes());
    sig
}

/// The client half of one handshake.
pub struct Client {
    user: String,
    domain: String,
    password: String,
    /// MsvAvTargetName: the SPN the proof is for (MS-NLMP 2.2.2.1), so a
    /// relay to another service does not accept it.
    target_name: Option<String>,
    negotiate: Vec<u8>,
}

/// What the AUTHENTICATE step yields.
pub struct Authenticated {
    pub message: Vec<u8>,
    pub exported_session_key: [u8; 16],
}

/// Parsed CHALLENGE message.
struct Challenge {
    flags: u32,
    server_challenge: [u8; 8],
    target_info: Vec<u8>,
}

fn field(msg: &[u8], at: usize, what: &'static str) -> Result<Vec<u8>, NtlmError> {
    let len = u16::from_le_bytes(
        msg.get(at..at + 2)
            .ok_or(NtlmError::Malformed(what))?
            .try_into()
            .unwrap(),
    ) as usize;
    let off = u32::from_le_bytes(
        msg.get(at + 4..at + 8)
            .ok_or(NtlmError::Malformed(what))?
            .try_into()
            .unwrap(),
    ) as usize;
    if len == 0 {
        return Ok(Vec::new());
    }
    msg.get(off..off + len)
        .map(<[u8]>::to_vec)
        .ok_or(NtlmError::Malformed(what))
}

fn parse_challenge(msg: &[u8]) -> Result<Challenge, NtlmError> {
    if msg.len() < 48 || &msg[..8] != SIGNATURE || msg[8..12] != 2u32.to_le_bytes() {
        return Err(NtlmError::Malformed("CHALLENGE"));
    }
    let flags = u32::from_le_bytes(msg[20..24].try_into().unwrap());
    let mut server_challenge = [0u8; 8];
    server_challenge.copy_from_slice(&msg[24..32]);
    let target_info = field(msg, 40, "CHALLENGE")?;
    Ok(Challenge {
        flags,
        server_challenge,
        target_info,
    })
}

/// AV pairs as (id, value), up to MsvAvEOL.
pub fn av_pairs(info: &[u8]) -> Result<Vec<(u16, Vec<u8>)>, NtlmError> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 4 <= info.len() {
        let id = u16::from_le_bytes([info[i], info[i + 1]]);
        let len = u16::from_le_bytes([info[i + 2], info[i + 3]]) as usize;
        if id == AV_EOL {
            return Ok(out);
        }
        let v = info
            .get(i + 4..i + 4 + len)
            .ok_or(NtlmError::Malformed("target info"))?;
        out.push((id, v.to_vec()));
        i += 4 + len;
    }
    Err(NtlmError::Malformed("target info"))
}

fn encode_av_pairs(pairs: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (id, v) in pairs {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&(v.len() as u16).to_le_bytes());
        out.extend_from_slice(v);
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out
}

/// Windows FILETIME: 100 ns ticks since 1601.
fn filetime_now() -> u64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (unix.as_nanos() / 100) as u64 + 116_444_736_000_000_000
}

/// NTLMv2 response (NTProofStr || temp) and the session base key.
pub fn ntlmv2_response(
    response_key: &[u8; 16],
    server_challenge: &[u8; 8],
    client_challenge: &[u8; 8],
    time: u64,
    target_info: &[u8],
) -> (Vec<u8>, [u8; 16]) {
    let mut temp = vec![1u8, 1, 0, 0, 0, 0, 0, 0];
    temp.extend_from_slice(&time.to_le_bytes());
    temp.extend_from_slice(client_challenge);
    temp.extend_from_slice(&[0, 0, 0, 0]);
    temp.extend_from_slice(target_info);
    temp.extend_from_slice(&[0, 0, 0, 0]);
    let proof = hmac_md5(response_key, &[server_challenge, &temp]);
    let base = hmac_md5(response_key, &[&proof]);
    let mut resp = proof.to_vec();
    resp.extend_from_slice(&temp);
    (resp, base)
}

impl Client {
    /// `user` may be `DOMAIN\user` or `user@domain`; a bare name is a local account.
    pub fn new(user: &str, password: &str) -> Self {
        let (domain, user) = if let Some((d, u)) = user.split_once('\\') {
            (d.to_string(), u.to_string())
        } else if let Some((u, d)) = user.split_once('@') {
            (d.to_string(), u.to_string())
        } else {
            (String::new(), user.to_string())
        };
        Client {
            user,
            domain,
            password: password.to_string(),
            target_name: None,
            negotiate: Vec::new(),
        }
    }

    /// Names the service the proof is for, e.g. `HTTP/host` for WinRM.
    pub fn with_target_name(mut self, spn: &str) -> Self {
        self.target_name = Some(spn.to_string());
        self
    }

    pub fn negotiate(&mut self) -> Vec<u8> {
        let mut m = SIGNATURE.to_vec();
        m.extend_from_slice(&1u32.to_le_bytes());
        m.extend_from_slice(&CLIENT_FLAGS.to_le_bytes());
        // Empty domain and workstation fields (offset just past the header).
        for _ in 0..2 {
            m.extend_from_slice(&0u16.to_le_bytes());
            m.extend_from_slice(&0u16.to_le_bytes());
            m.extend_from_slice(&40u32.to_le_bytes());
        }
        m.extend_from_slice(&VERSION);
        self.negotiate = m.clone();
        m
    }

    /// `channel_bindings`: over HTTPS, the TLS channel's (see `cbt`).
    pub fn authenticate(
        &self,
        challenge: &[u8],
        channel_bindings: Option<[u8; 16]>,
    ) -> Result<Authenticated, NtlmError> {
        let random_key: [u8; 16] = rand::random();
        let client_challenge: [u8; 8] = rand::random();
        self.authenticate_with(
            challenge,
            random_key,
            client_challenge,
            None,
            channel_bindings,
        )
    }

    /// The AUTHENTICATE message with a MIC over all three messages; `time`
    /// overrides the server's timestamp (tests only).
    fn authenticate_with(
        &self,
        challenge_msg: &[u8],
        exported_session_key: [u8; 16],
        client_challenge: [u8; 8],
        time: Option<u64>,
        channel_bindings: Option<[u8; 16]>,
    ) -> Result<Authenticated, NtlmError> {
        let ch = parse_challenge(challenge_msg)?;
        if ch.flags & NEGOTIATE_KEY_EXCH == 0 || ch.flags & NEGOTIATE_SEAL == 0 {
            return Err(NtlmError::Unsupported("key exchange and sealing"));
        }
        if ch.flags & NEGOTIATE_EXTENDED_SESSIONSECURITY == 0 {
            return Err(NtlmError::Unsupported("extended session security (NTLMv2)"));
        }
        let mut pairs = av_pairs(&ch.target_info)?;
        let server_time = pairs
            .iter()
            .find(|(id, _)| *id == AV_TIMESTAMP)
            .and_then(|(_, v)| v.as_slice().try_into().ok())
            .map(u64::from_le_bytes);
        // With the server's timestamp the client must send a MIC and say so.
        let with_mic = server_time.is_some();
        if with_mic {
            match pairs.iter_mut().find(|(id, _)| *id == AV_FLAGS) {
                Some((_, v)) if v.len() == 4 => {
                    let f = u32::from_le_bytes(v.as_slice().try_into().unwrap()) | AV_FLAG_MIC;
                    *v = f.to_le_bytes().to_vec();
                }
                _ => pairs.push((AV_FLAGS, AV_FLAG_MIC.to_le_bytes().to_vec())),
            }
        }
        if let Some(spn) = &self.target_name {
            pairs.retain(|(id, _)| *id != AV_TARGET_NAME);
            pairs.push((AV_TARGET_NAME, utf16le(spn)));
        }
        if let Some(cb) = channel_bindings {
            pairs.retain(|(id, _)| *id != AV_CHANNEL_BINDINGS);
            pairs.push((AV_CHANNEL_BINDINGS, cb.to_vec()));
        }
        let info = encode_av_pairs(&pairs);
        // encode_av_pairs appends EOL; ntlmv2_response appends the trailing zero.
        let info = &info[..info.len()];
        let key = ntowfv2(&self.password, &self.user, &self.domain);
        let time = time.or(server_time).unwrap_or_else(filetime_now);
        let (nt_resp, base_key) =
            ntlmv2_response(&key, &ch.server_challenge, &client_challenge, time, info);
        let lm_resp = if with_mic {
            vec![0u8; 24]
        } else {
            let mut r = hmac_md5(&key, &[&ch.server_challenge, &client_challenge]).to_vec();
            r.extend_from_slice(&client_challenge);
            r
        };
        let mut enc_key = exported_session_key;
        Rc4::new(&base_key).apply(&mut enc_key);
        let flags = CLIENT_FLAGS & ch.flags | NEGOTIATE_UNICODE;

        let domain = utf16le(&self.domain);
        let user = utf16le(&self.user);
        let workstation = utf16le("VMSCAN");
        let payloads: [&[u8]; 6] = [&lm_resp, &nt_resp, &domain, &user, &workstation, &enc_key];
        // Each length is a u16: a longer payload would be cut and the
        // offsets after it would point into the wrong bytes.
        if payloads.iter().any(|p| p.len() > usize::from(u16::MAX)) {
            return Err(NtlmError::TooLong);
        }
        let mut m = SIGNATURE.to_vec();
        m.extend_from_slice(&3u32.to_le_bytes());
        let mut offset = 88u32;
        for p in &payloads {
            m.extend_from_slice(&(p.len() as u16).to_le_bytes());
            m.extend_from_slice(&(p.len() as u16).to_le_bytes());
            m.extend_from_slice(&offset.to_le_bytes());
            offset += p.len() as u32;
        }
        m.extend_from_slice(&flags.to_le_bytes());
        m.extend_from_slice(&VERSION);
        m.extend_from_slice(&[0u8; 16]);
        for p in &payloads {
            m.extend_from_slice(p);
        }
        if with_mic {
            let mic = hmac_md5(&exported_session_key, &[&self.negotiate, challenge_msg, &m]);
            m[72..88].copy_from_slice(&mic);
        }
        Ok(Authenticated {
            message: m,
            exported_session_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Test vectors of MS-NLMP 4.2.4 (NTLMv2 authentication).
    const USER: &str = "User";
    const DOMAIN: &str = "Domain";
    const PASSWORD: &str = "Password";

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    #[test]
    fn ntowfv2_matches_the_spec() {
        assert_eq!(
            ntowfv2(PASSWORD, USER, DOMAIN).to_vec(),
            h("0c868a403bfd7a93a3001ef22ef02e3f")
        );
    }

    #[test]
    fn ntlmv2_proof_and_session_key_match_the_spec() {
        let key = ntowfv2(PASSWORD, USER, DOMAIN);
        let mut info = Vec::new();
        info.extend_from_slice(&[2, 0, 12, 0]);
        info.extend_from_slice(&utf16le("Domain"));
        info.extend_from_slice(&[1, 0, 12, 0]);
        info.extend_from_slice(&utf16le("Server"));
        info.extend_from_slice(&[0, 0, 0, 0]);
        let (resp, base) = ntlmv2_response(
            &key,
            &[0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef],
            &[0xaa; 8],
            0,
            &info,
        );
        assert_eq!(resp[..16].to_vec(), h("68cd0ab851e51c96aabc927bebef6a1c"));
        assert_eq!(base.to_vec(), h("8de40ccadbc14a82f15cb0ad0de95ca3"));
    }

    #[test]
    fn sealing_matches_the_spec() {
        let mut s = Session::client(&[0x55; 16]);
        assert_eq!(s.send_sign.to_vec(), h("4788dc861b4782f35d43fd98fe1a2d39"));
        let (sig, sealed) = s.seal(&utf16le("Plaintext"));
        assert_eq!(sealed, h("54e50165bf1936dc996020c1811b0f06fb5f"));
        assert_eq!(sig.to_vec(), h("010000007fb38ec5c55d497600000000"));
    }

    #[test]
    fn a_challenge_whose_answer_cannot_fit_is_refused() {
        // Found by tests/parsers_prop.rs: near 64 KiB of target info made the
        // NT response longer than its u16 length field, silently cut.
        let mut c = Client::new("user", PASSWORD);
        c.negotiate();
        let info = encode_av_pairs(&[
            (2u16, vec![b'x'; 65_500]),
            (AV_TIMESTAMP, 5u64.to_le_bytes().to_vec()),
        ]);
        let mut ch = SIGNATURE.to_vec();
        ch.extend_from_slice(&2u32.to_le_bytes());
        ch.extend_from_slice(&[0, 0, 0, 0, 56, 0, 0, 0]);
        ch.extend_from_slice(&CLIENT_FLAGS.to_le_bytes());
        ch.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        ch.extend_from_slice(&[0; 8]);
        ch.extend_from_slice(&(info.len() as u16).to_le_bytes());
        ch.extend_from_slice(&(info.len() as u16).to_le_bytes());
        ch.extend_from_slice(&56u32.to_le_bytes());
        ch.extend_from_slice(&VERSION);
        ch.extend_from_slice(&info);
        let e = c.authenticate(&ch, None).err();
        assert_eq!(e, Some(NtlmError::TooLong));
    }

    #[test]
    fn authenticate_message_carries_the_user_and_a_valid_proof() {
        let mut c = Client::new(r"Domain\User", PASSWORD);
        let neg = c.negotiate();
        assert_eq!(&neg[..8], SIGNATURE);
        // A CHALLENGE as Windows sends it: target info with a timestamp.
        let pairs = vec![
            (2u16, utf16le("Domain")),
            (1u16, utf16le("Server")),
            (AV_TIMESTAMP, 5u64.to_le_bytes().to_vec()),
        ];
        let info = encode_av_pairs(&pairs);
        let mut ch = SIGNATURE.to_vec();
        ch.extend_from_slice(&2u32.to_le_bytes());
        ch.extend_from_slice(&[0, 0, 0, 0, 56, 0, 0, 0]);
        ch.extend_from_slice(&CLIENT_FLAGS.to_le_bytes());
        ch.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        ch.extend_from_slice(&[0; 8]);
        ch.extend_from_slice(&(info.len() as u16).to_le_bytes());
        ch.extend_from_slice(&(info.len() as u16).to_le_bytes());
        ch.extend_from_slice(&56u32.to_le_bytes());
        ch.extend_from_slice(&VERSION);
        ch.extend_from_slice(&info);
        let a = c
            .authenticate_with(&ch, [0x55; 16], [0xaa; 8], None, None)
            .unwrap();
        let user = field(&a.message, 36, "x").unwrap();
        assert_eq!(user, utf16le("User"));
        let nt = field(&a.message, 20, "x").unwrap();
        let key = ntowfv2(PASSWORD, "User", "Domain");
        let proof = hmac_md5(&key, &[&[1, 2, 3, 4, 5, 6, 7, 8], &nt[16..]]);
        assert_eq!(&nt[..16], &proof);
        // The MIC covers all three messages with the MIC field zeroed.
        let mut zeroed = a.message.clone();
        zeroed[72..88].fill(0);
        assert_eq!(
            a.message[72..88].to_vec(),
            hmac_md5(&[0x55; 16], &[&neg, &ch, &zeroed]).to_vec()
        );
        assert!(!av_pairs(&nt[44..])
            .unwrap()
            .iter()
            .any(|(id, _)| *id == AV_CHANNEL_BINDINGS));

        // Over HTTPS the proof also covers the channel bindings.
        let a = c
            .authenticate_with(&ch, [0x55; 16], [0xaa; 8], None, Some([0xcb; 16]))
            .unwrap();
        let nt = field(&a.message, 20, "x").unwrap();
        let proof = hmac_md5(&key, &[&[1, 2, 3, 4, 5, 6, 7, 8], &nt[16..]]);
        assert_eq!(&nt[..16], &proof);
        let sent = av_pairs(&nt[44..]).unwrap();
        assert!(
            sent.contains(&(AV_CHANNEL_BINDINGS, vec![0xcb; 16])),
            "{sent:?}"
        );
        assert!(
            !sent.iter().any(|(id, _)| *id == AV_TARGET_NAME),
            "no SPN unless asked"
        );
        let c = c.with_target_name("HTTP/win1.example.com");
        let a = c
            .authenticate_with(&ch, [0x55; 16], [0xaa; 8], None, None)
            .unwrap();
        let nt = field(&a.message, 20, "x").unwrap();
        let sent = av_pairs(&nt[44..]).unwrap();
        assert!(
            sent.contains(&(AV_TARGET_NAME, utf16le("HTTP/win1.example.com"))),
            "{sent:?}"
        );
        // The proof still covers the blob with the SPN in it.
        let proof = hmac_md5(&key, &[&[1, 2, 3, 4, 5, 6, 7, 8], &nt[16..]]);
        assert_eq!(&nt[..16], &proof);
    }
}
