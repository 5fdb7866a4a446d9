//! TLS 1.3 records once the handshake is done: application data sealed and
//! opened, alerts, and key updates (RFC 8446 §5, §4.6.3, §7.2).
//!
//! rustls keeps its whole connection for the connection's life: the
//! handshake's reassembly room, the boxed ciphers, the peer's certificates,
//! the key schedule; 3.7 KiB, of which a gateway's idle device connection
//! needs only the keys. What TLS 1.3 needs after the handshake is two AEAD
//! keys, their nonces and sequence numbers, and the two traffic secrets to
//! roll them forward on a key update. This is that state and the rules for
//! using it, with no IO: the stream (`transport::stream`) reads and writes
//! the bytes.

use ring::{aead, hkdf};
use rustls::{AlertDescription, Error, HandshakeType, InvalidMessage, PeerMisbehaved};
use zeroize::Zeroize;

/// A record's header: content type, legacy version, length.
pub const HEADER: usize = 5;
/// Every TLS 1.3 suite's AEAD tag.
const TAG: usize = 16;
/// Largest plaintext a record carries.
pub const MAX_PLAINTEXT: usize = 1 << 14;
/// Largest encrypted payload a record may carry (§5.2).
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
/// What sealing adds to a record's plaintext: header, content type, tag.
const OVERHEAD: usize = HEADER + 1 + TAG;

const CHANGE_CIPHER_SPEC: u8 = 20;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;

const KEY_UPDATE: u8 = 24;
const UPDATE_NOT_REQUESTED: u8 = 0;
const UPDATE_REQUESTED: u8 = 1;

const WARNING: u8 = 1;
const FATAL: u8 = 2;

/// The length of the payload a record's header announces (any TLS version's).
pub fn payload_len(header: &[u8; HEADER]) -> usize {
    usize::from(u16::from_be_bytes([header[3], header[4]]))
}

/// The AEAD of a TLS 1.3 cipher suite, and the hash its key schedule uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    Aes128GcmSha256,
    Aes256GcmSha384,
    Chacha20Poly1305Sha256,
}

impl Suite {
    /// The suite rustls negotiated, if it is one of these.
    pub fn of(suite: rustls::SupportedCipherSuite) -> Option<Self> {
        use rustls::CipherSuite::*;
        match suite.suite() {
            TLS13_AES_128_GCM_SHA256 => Some(Self::Aes128GcmSha256),
            TLS13_AES_256_GCM_SHA384 => Some(Self::Aes256GcmSha384),
            TLS13_CHACHA20_POLY1305_SHA256 => Some(Self::Chacha20Poly1305Sha256),
            _ => None,
        }
    }

    fn aead(self) -> &'static aead::Algorithm {
        match self {
            Self::Aes128GcmSha256 => &aead::AES_128_GCM,
            Self::Aes256GcmSha384 => &aead::AES_256_GCM,
            Self::Chacha20Poly1305Sha256 => &aead::CHACHA20_POLY1305,
        }
    }

    fn hkdf(self) -> hkdf::Algorithm {
        match self {
            Self::Aes256GcmSha384 => hkdf::HKDF_SHA384,
            _ => hkdf::HKDF_SHA256,
        }
    }

    /// Records one key may seal before it is rolled: rustls's figures for
    /// these AEADs (AES-GCM's from the CFRG's AEAD limits draft; ChaCha20's
    /// is bounded only by the sequence number, which rustls stops short of).
    fn confidentiality_limit(self) -> u64 {
        match self {
            Self::Chacha20Poly1305Sha256 => 0xffff_ffff_ffff_0000,
            _ => 1 << 24,
        }
    }
}

/// A traffic secret: the hash's length of bytes, wiped when dropped.
pub struct Secret {
    bytes: [u8; 48],
    len: u8,
}

impl Secret {
    /// `None` if `bytes` is longer than any TLS 1.3 hash.
    pub fn new(bytes: &[u8]) -> Option<Self> {
        let mut secret = Self {
            bytes: [0; 48],
            len: u8::try_from(bytes.len()).ok()?,
        };
        secret.bytes.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(secret)
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

/// A length for ring's HKDF output.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand-Label (§7.1) with an empty context.
fn expand_label(suite: Suite, secret: &Secret, label: &[u8], out: &mut [u8]) -> Result<(), Error> {
    let prk = hkdf::Prk::new_less_safe(suite.hkdf(), secret.as_bytes());
    let length = u16::try_from(out.len()).map_err(|_| derivation_failed())?;
    let label_len = u8::try_from(b"tls13 ".len() + label.len()).map_err(|_| derivation_failed())?;
    let info: [&[u8]; 5] = [&length.to_be_bytes(), &[label_len], b"tls13 ", label, &[0]];
    prk.expand(&info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .map_err(|_| derivation_failed())
}

fn derivation_failed() -> Error {
    Error::General("TLS key derivation failed".into())
}

/// One direction's key, where it stands, and the secret it came from.
struct Keys {
    key: aead::LessSafeKey,
    iv: [u8; aead::NONCE_LEN],
    seq: u64,
    secret: Secret,
}

impl Keys {
    /// The key and nonce `secret` makes (§7.3), at sequence number `seq`.
    fn derive(suite: Suite, secret: Secret, seq: u64) -> Result<Self, Error> {
        let mut key = [0u8; 32];
        let key = &mut key[..suite.aead().key_len()];
        let mut iv = [0u8; aead::NONCE_LEN];
        let unbound = expand_label(suite, &secret, b"key", key)
            .and_then(|()| expand_label(suite, &secret, b"iv", &mut iv))
            .and_then(|()| {
                aead::UnboundKey::new(suite.aead(), key).map_err(|_| derivation_failed())
            });
        key.zeroize();
        Ok(Self {
            key: aead::LessSafeKey::new(unbound?),
            iv,
            seq,
            secret,
        })
    }

    /// The next generation of keys (§7.2).
    fn roll(&mut self, suite: Suite) -> Result<(), Error> {
        let mut next = Secret {
            bytes: [0; 48],
            len: self.secret.len,
        };
        let len = usize::from(next.len);
        expand_label(suite, &self.secret, b"traffic upd", &mut next.bytes[..len])?;
        *self = Self::derive(suite, next, 0)?;
        Ok(())
    }

    /// The nonce of the record at `seq` (§5.3).
    fn nonce(&self) -> aead::Nonce {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        aead::Nonce::assume_unique_for_key(nonce)
    }
}

/// What a record brought.
#[derive(Debug, PartialEq, Eq)]
pub enum Content<'a> {
    /// Application data (possibly none).
    Data(&'a [u8]),
    /// The peer is done sending (close_notify).
    Closed,
    /// A key update or a user_canceled warning: nothing for the reader.
    Nothing,
}

/// Key updates a peer may send in a row with no application data between
/// them, and warnings it may send in all: a peer looping on them is
/// refused, as rustls and BoringSSL refuse it.
const KEY_UPDATES_IN_A_ROW: u8 = 32;
const WARNINGS: u8 = 4;

/// Both directions of an established TLS 1.3 connection.
pub struct Records {
    suite: Suite,
    rx: Keys,
    tx: Keys,
    key_updates_left: u8,
    warnings_left: u8,
    /// The peer asked for our key update: it goes out before the next
    /// record we seal (§4.6.3), one for any number of requests, as rustls
    /// sends it, so that a peer that asks and never reads is answered by
    /// no more than one record.
    update_due: bool,
    /// close_notify is sealed: nothing more is (§6.1).
    closed: bool,
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl Records {
    /// Takes over from a handshake: the sequence number each direction
    /// stands at and its traffic secret, the peer's (`rx`) and ours (`tx`).
    pub fn new(suite: Suite, rx: (u64, Secret), tx: (u64, Secret)) -> Result<Self, Error> {
        Ok(Self {
            suite,
            rx: Keys::derive(suite, rx.1, rx.0)?,
            tx: Keys::derive(suite, tx.1, tx.0)?,
            key_updates_left: KEY_UPDATES_IN_A_ROW,
            warnings_left: WARNINGS,
            update_due: false,
            closed: false,
        })
    }

    /// Opens the record at the start of `buf` in place. `Ok(None)` if `buf`
    /// does not hold a whole record yet; else how many bytes it took and
    /// what it brought. A refused record's alert, which tells the peer why,
    /// is sealed onto `reply`.
    pub fn open<'b>(
        &mut self,
        buf: &'b mut [u8],
        reply: &mut Vec<u8>,
    ) -> Result<Option<(usize, Content<'b>)>, Error> {
        match self.open_record(buf) {
            Err((error, alert)) => {
                if let Some(alert) = alert.filter(|_| !self.closed) {
                    // A failure to seal it leaves the peer to its timeout.
                    let _ = self.seal_record(ALERT, &[FATAL, u8::from(alert)], reply);
                }
                Err(error)
            }
            Ok(opened) => Ok(opened),
        }
    }

    fn open_record<'b>(
        &mut self,
        buf: &'b mut [u8],
    ) -> Result<Option<(usize, Content<'b>)>, Refusal> {
        use AlertDescription::*;
        let Some(header) = buf.first_chunk::<HEADER>().copied() else {
            return Ok(None);
        };
        let len = payload_len(&header);
        if len > MAX_CIPHERTEXT {
            return Err((Error::PeerSentOversizedRecord, Some(RecordOverflow)));
        }
        // Every record after the handshake is protected, so it says
        // application_data outside (§5.2); the version is to be ignored.
        if header[0] != APPLICATION_DATA {
            let error = InvalidMessage::InvalidContentType.into();
            return Err((error, Some(UnexpectedMessage)));
        }
        let Some(payload) = buf.get_mut(HEADER..HEADER + len) else {
            return Ok(None);
        };
        if len < TAG || self.rx.seq == u64::MAX {
            return Err((Error::DecryptError, Some(BadRecordMac)));
        }
        let nonce = self.rx.nonce();
        let plain = self
            .rx
            .key
            .open_in_place(nonce, aead::Aad::from(header), payload)
            .map_err(|_| (Error::DecryptError, Some(BadRecordMac)))?;
        self.rx.seq += 1;
        if plain.len() > MAX_PLAINTEXT + 1 {
            return Err((Error::PeerSentOversizedRecord, Some(RecordOverflow)));
        }
        // The content type is the last byte that is not padding (§5.4).
        let Some(end) = plain.iter().rposition(|&b| b != 0) else {
            let error = PeerMisbehaved::IllegalTlsInnerPlaintext.into();
            return Err((error, Some(UnexpectedMessage)));
        };
        let (content, typ) = (&plain[..end], plain[end]);
        if content.len() > MAX_PLAINTEXT {
            return Err((Error::PeerSentOversizedRecord, Some(RecordOverflow)));
        }
        let content = match typ {
            APPLICATION_DATA => {
                self.key_updates_left = KEY_UPDATES_IN_A_ROW;
                Content::Data(content)
            }
            ALERT => self.alert(content)?,
            HANDSHAKE => {
                self.key_update(content)?;
                Content::Nothing
            }
            CHANGE_CIPHER_SPEC => {
                let error = PeerMisbehaved::IllegalMiddleboxChangeCipherSpec.into();
                return Err((error, Some(UnexpectedMessage)));
            }
            _ => {
                let error = InvalidMessage::InvalidContentType.into();
                return Err((error, Some(UnexpectedMessage)));
            }
        };
        Ok(Some((HEADER + len, content)))
    }

    /// What an alert means for the reader: close_notify ends its data, a
    /// few user_canceled warnings mean nothing, and every other alert is
    /// fatal in TLS 1.3 (§6).
    fn alert(&mut self, content: &[u8]) -> Result<Content<'static>, Refusal> {
        use AlertDescription::*;
        let [level, description] = *content else {
            return Err((InvalidMessage::MessageTooShort.into(), Some(DecodeError)));
        };
        let description = AlertDescription::from(description);
        let error = Error::AlertReceived(description);
        match (level, description) {
            (WARNING | FATAL, CloseNotify) => Ok(Content::Closed),
            (WARNING, UserCanceled) if self.warnings_left > 0 => {
                self.warnings_left -= 1;
                Ok(Content::Nothing)
            }
            (WARNING, UserCanceled) => Err((
                PeerMisbehaved::TooManyWarningAlertsReceived.into(),
                Some(UnexpectedMessage),
            )),
            (WARNING, _) => Err((error, Some(DecodeError))),
            (FATAL, _) => Err((error, None)),
            _ => Err((error, Some(IllegalParameter))),
        }
    }

    /// The one handshake message a server takes once the handshake is
    /// done: a KeyUpdate, alone in its record (§5.1 has a key change end
    /// its record; one split across records, legal but never seen, is
    /// refused). Our own update is due if the peer asked for one.
    fn key_update(&mut self, message: &[u8]) -> Result<(), Refusal> {
        use AlertDescription::*;
        let request = match *message {
            [KEY_UPDATE, 0, 0, 1, request] => request,
            [typ, ..] if typ != KEY_UPDATE => {
                let error = Error::InappropriateHandshakeMessage {
                    expect_types: vec![HandshakeType::KeyUpdate],
                    got_type: HandshakeType::from(typ),
                };
                return Err((error, Some(UnexpectedMessage)));
            }
            _ => return Err((InvalidMessage::InvalidKeyUpdate.into(), Some(DecodeError))),
        };
        if self.key_updates_left == 0 {
            let error = PeerMisbehaved::TooManyKeyUpdateRequests.into();
            return Err((error, Some(UnexpectedMessage)));
        }
        self.key_updates_left -= 1;
        match request {
            UPDATE_NOT_REQUESTED => {}
            UPDATE_REQUESTED => self.update_due = true,
            _ => {
                let error = InvalidMessage::InvalidKeyUpdate.into();
                return Err((error, Some(IllegalParameter)));
            }
        }
        self.rx.roll(self.suite).map_err(|e| (e, None))
    }

    /// Tells the peer our keys change, and changes them.
    fn update_ours(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        let message = [KEY_UPDATE, 0, 0, 1, UPDATE_NOT_REQUESTED];
        self.seal_record(HANDSHAKE, &message, out)?;
        self.tx.roll(self.suite)
    }

    /// Appends `data` to `out` as application data records.
    pub fn seal(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        out.reserve(data.len() + data.len().div_ceil(MAX_PLAINTEXT) * OVERHEAD);
        data.chunks(MAX_PLAINTEXT)
            .try_for_each(|chunk| self.seal_record(APPLICATION_DATA, chunk, out))
    }

    /// Appends a close_notify alert to `out`; nothing is sealed after it.
    pub fn seal_close_notify(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        let close_notify = [WARNING, u8::from(AlertDescription::CloseNotify)];
        self.seal_record(ALERT, &close_notify, out)?;
        self.closed = true;
        Ok(())
    }

    /// Seals one record of `typ` holding `content` (at most a record's
    /// plaintext) onto `out`. Our keys roll first if the peer asked, or
    /// once they have sealed as many records as their AEAD safely may.
    fn seal_record(&mut self, typ: u8, content: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        if self.closed {
            return Err(Error::General("the TLS connection is closed".into()));
        }
        if typ != HANDSHAKE
            && (self.update_due || self.tx.seq >= self.suite.confidentiality_limit())
        {
            self.update_due = false;
            self.update_ours(out)?;
        }
        let len = u16::try_from(content.len() + 1 + TAG).map_err(|_| Error::EncryptError)?;
        let [hi, lo] = len.to_be_bytes();
        let header = [APPLICATION_DATA, 3, 3, hi, lo];
        let start = out.len();
        out.extend_from_slice(&header);
        out.extend_from_slice(content);
        out.push(typ);
        let nonce = self.tx.nonce();
        let aad = aead::Aad::from(header);
        match self
            .tx
            .key
            .seal_in_place_separate_tag(nonce, aad, &mut out[start + HEADER..])
        {
            Ok(tag) => out.extend_from_slice(tag.as_ref()),
            Err(_) => {
                out.truncate(start);
                return Err(Error::EncryptError);
            }
        }
        self.tx.seq += 1;
        Ok(())
    }
}

/// Why a record was refused, and the alert that tells the peer (none for
/// an alert of its own).
type Refusal = (Error, Option<AlertDescription>);

#[cfg(test)]
mod tests {
    use super::*;

    const SUITES: [Suite; 3] = [
        Suite::Aes128GcmSha256,
        Suite::Aes256GcmSha384,
        Suite::Chacha20Poly1305Sha256,
    ];

    fn secret(suite: Suite, seed: u8) -> Secret {
        let len = hkdf::KeyType::len(&suite.hkdf());
        let bytes: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect();
        Secret::new(&bytes).expect("a secret")
    }

    /// The server's records and the client's, as after one handshake.
    fn pair(suite: Suite) -> (Records, Records) {
        let side = |rx, tx| Records::new(suite, (0, secret(suite, rx)), (0, secret(suite, tx)));
        let server = side(1, 2).expect("server");
        let client = side(2, 1).expect("client");
        (server, client)
    }

    /// Opens every record in `wire`: what each brought, owned, or the error
    /// that stopped it, and what was sealed in reply.
    fn open_all(records: &mut Records, mut wire: Vec<u8>) -> (Vec<Result<Opened, Error>>, Vec<u8>) {
        let (mut at, mut got, mut reply) = (0, Vec::new(), Vec::new());
        loop {
            match records.open(&mut wire[at..], &mut reply) {
                Ok(None) => break,
                Ok(Some((taken, content))) => {
                    at += taken;
                    got.push(Ok(match content {
                        Content::Data(d) => Opened::Data(d.to_vec()),
                        Content::Closed => Opened::Closed,
                        Content::Nothing => Opened::Nothing,
                    }));
                }
                Err(e) => {
                    got.push(Err(e));
                    return (got, reply);
                }
            }
        }
        assert_eq!(at, wire.len(), "every whole record was taken");
        (got, reply)
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Opened {
        Data(Vec<u8>),
        Closed,
        Nothing,
    }

    fn data(records: &[Result<Opened, Error>]) -> Vec<u8> {
        records
            .iter()
            .flat_map(|r| match r {
                Ok(Opened::Data(d)) => d.clone(),
                other => panic!("not data: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn data_travels_both_ways_under_every_suite() {
        for suite in SUITES {
            let (mut server, mut client) = pair(suite);
            let up: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
            let mut wire = Vec::new();
            client.seal(&up, &mut wire).expect("seal");
            assert_eq!(
                wire.len(),
                up.len() + 3 * OVERHEAD,
                "{suite:?}: three records"
            );
            let (got, reply) = open_all(&mut server, wire);
            assert_eq!(data(&got), up, "{suite:?}");
            assert!(reply.is_empty());
            let mut wire = Vec::new();
            server.seal(b"down", &mut wire).expect("seal");
            server.seal(b"", &mut wire).expect("seal nothing");
            // An empty record is allowed (§5.1), though we seal none.
            server
                .seal_record(APPLICATION_DATA, b"", &mut wire)
                .expect("seal");
            let (got, _) = open_all(&mut client, wire);
            assert_eq!(
                got,
                [Ok(Opened::Data(b"down".to_vec())), Ok(Opened::Data(vec![]))]
            );
        }
    }

    #[test]
    fn a_record_waits_until_it_is_whole() {
        let (mut server, mut client) = pair(Suite::Aes128GcmSha256);
        let mut wire = Vec::new();
        client.seal(b"hello", &mut wire).expect("seal");
        let mut reply = Vec::new();
        for cut in [0, 3, HEADER, wire.len() - 1] {
            let mut part = wire[..cut].to_vec();
            assert_eq!(server.open(&mut part, &mut reply), Ok(None), "cut at {cut}");
        }
        let opened = server.open(&mut wire, &mut reply).expect("whole");
        assert_eq!(
            opened,
            Some((HEADER + 5 + 1 + TAG, Content::Data(b"hello")))
        );
    }

    /// A client that asks for our update gets it before our next data, and
    /// both directions go on under the new keys.
    #[test]
    fn a_key_update_asked_for_is_answered_and_both_sides_roll() {
        for suite in SUITES {
            let (mut server, mut client) = pair(suite);
            let mut wire = Vec::new();
            let update = [KEY_UPDATE, 0, 0, 1, UPDATE_REQUESTED];
            client
                .seal_record(HANDSHAKE, &update, &mut wire)
                .expect("seal");
            client.tx.roll(suite).expect("roll");
            client.seal(b"after", &mut wire).expect("seal");
            let (got, mut reply) = open_all(&mut server, wire);
            assert_eq!(
                got,
                [Ok(Opened::Nothing), Ok(Opened::Data(b"after".to_vec()))]
            );
            server.seal(b"back", &mut reply).expect("seal");
            let (got, _) = open_all(&mut client, reply);
            assert_eq!(
                got,
                [Ok(Opened::Nothing), Ok(Opened::Data(b"back".to_vec()))],
                "{suite:?}: our key update, then data under the new key"
            );
        }
    }

    /// However often a peer asks for our update without reading, it gets
    /// one, with the next record we seal.
    #[test]
    fn key_updates_asked_for_are_answered_once_with_our_next_record() {
        let suite = Suite::Aes128GcmSha256;
        let (mut server, mut client) = pair(suite);
        let mut wire = Vec::new();
        for _ in 0..5 {
            let update = [KEY_UPDATE, 0, 0, 1, UPDATE_REQUESTED];
            client
                .seal_record(HANDSHAKE, &update, &mut wire)
                .expect("seal");
            client.tx.roll(suite).expect("roll");
        }
        let (got, reply) = open_all(&mut server, wire);
        assert_eq!(got.len(), 5);
        assert!(reply.is_empty(), "nothing sealed until we send");
        let mut wire = Vec::new();
        server.seal(b"one", &mut wire).expect("seal");
        server.seal(b"two", &mut wire).expect("seal");
        let (got, _) = open_all(&mut client, wire);
        assert_eq!(
            got,
            [
                Ok(Opened::Nothing),
                Ok(Opened::Data(b"one".to_vec())),
                Ok(Opened::Data(b"two".to_vec())),
            ]
        );
    }

    /// Once our close_notify is sealed nothing more is: no data, and no
    /// alert for a record refused afterwards.
    #[test]
    fn nothing_is_sealed_after_close_notify() {
        let (mut server, mut client) = pair(Suite::Aes128GcmSha256);
        let mut wire = Vec::new();
        server.seal_close_notify(&mut wire).expect("close");
        assert!(server.seal(b"late", &mut wire).is_err());
        let (got, _) = open_all(&mut client, wire);
        assert_eq!(got, [Ok(Opened::Closed)]);
        let mut wire = Vec::new();
        client.seal(b"hello", &mut wire).expect("seal");
        wire[HEADER] ^= 1;
        let (got, reply) = open_all(&mut server, wire);
        assert_eq!(got, [Err(Error::DecryptError)]);
        assert!(reply.is_empty(), "no alert after close_notify");
    }

    #[test]
    fn our_keys_roll_before_the_aead_limit() {
        let (mut server, mut client) = pair(Suite::Aes256GcmSha384);
        server.tx.seq = Suite::Aes256GcmSha384.confidentiality_limit();
        client.rx.seq = server.tx.seq;
        let mut wire = Vec::new();
        server.seal(b"one", &mut wire).expect("seal");
        server.seal(b"two", &mut wire).expect("seal");
        assert_eq!(server.tx.seq, 2, "a new key, from sequence number 0");
        let (got, _) = open_all(&mut client, wire);
        assert_eq!(
            got,
            [
                Ok(Opened::Nothing),
                Ok(Opened::Data(b"one".to_vec())),
                Ok(Opened::Data(b"two".to_vec())),
            ]
        );
    }

    #[test]
    fn user_canceled_is_let_pass_a_few_times_and_close_notify_ends_the_data() {
        let (mut server, mut client) = pair(Suite::Chacha20Poly1305Sha256);
        let user_canceled = [WARNING, u8::from(AlertDescription::UserCanceled)];
        let mut wire = Vec::new();
        for _ in 0..WARNINGS {
            client
                .seal_record(ALERT, &user_canceled, &mut wire)
                .expect("seal");
        }
        client.seal(b"still here", &mut wire).expect("seal");
        let (got, reply) = open_all(&mut server, wire);
        let mut expected: Vec<_> = (0..WARNINGS).map(|_| Ok(Opened::Nothing)).collect();
        expected.push(Ok(Opened::Data(b"still here".to_vec())));
        assert_eq!(got, expected);
        assert!(reply.is_empty());
        let mut wire = Vec::new();
        client
            .seal_record(ALERT, &user_canceled, &mut wire)
            .expect("seal");
        let (got, _) = open_all(&mut server, wire);
        assert_eq!(
            got,
            [Err(PeerMisbehaved::TooManyWarningAlertsReceived.into())]
        );

        let (mut server, mut client) = pair(Suite::Chacha20Poly1305Sha256);
        let mut wire = Vec::new();
        client.seal(b"last", &mut wire).expect("seal");
        client.seal_close_notify(&mut wire).expect("close");
        let (got, reply) = open_all(&mut server, wire);
        assert_eq!(
            got,
            [Ok(Opened::Data(b"last".to_vec())), Ok(Opened::Closed)]
        );
        assert!(reply.is_empty());
    }

    #[test]
    fn a_peer_looping_on_key_updates_is_refused() {
        let suite = Suite::Aes128GcmSha256;
        let (mut server, mut client) = pair(suite);
        let update = |client: &mut Records, wire: &mut Vec<u8>| {
            let message = [KEY_UPDATE, 0, 0, 1, UPDATE_NOT_REQUESTED];
            client.seal_record(HANDSHAKE, &message, wire).expect("seal");
            client.tx.roll(suite).expect("roll");
        };
        let mut wire = Vec::new();
        for _ in 0..KEY_UPDATES_IN_A_ROW {
            update(&mut client, &mut wire);
        }
        client.seal(b"data", &mut wire).expect("seal");
        update(&mut client, &mut wire);
        let (got, _) = open_all(&mut server, wire);
        assert_eq!(
            got.len(),
            usize::from(KEY_UPDATES_IN_A_ROW) + 2,
            "data resets the count"
        );
        let mut wire = Vec::new();
        for _ in 0..KEY_UPDATES_IN_A_ROW {
            update(&mut client, &mut wire);
        }
        let (got, reply) = open_all(&mut server, wire);
        assert_eq!(
            got.last(),
            Some(&Err(PeerMisbehaved::TooManyKeyUpdateRequests.into()))
        );
        let (told, _) = open_all(&mut client, reply);
        assert_eq!(
            told,
            [Err(Error::AlertReceived(
                AlertDescription::UnexpectedMessage
            ))]
        );
    }

    /// Each kind of bad record fails with its error, and the peer hears the
    /// alert that says why, sealed so that it can read it.
    #[test]
    fn refused_records_tell_the_peer_why() {
        use AlertDescription::*;
        type Forge = fn(&mut Records, &mut Vec<u8>);
        let cases: [(&str, Forge, Error, AlertDescription); 7] = [
            (
                "tampered",
                |c, w| {
                    c.seal(b"hello", w).expect("seal");
                    w[HEADER + 1] ^= 1;
                },
                Error::DecryptError,
                BadRecordMac,
            ),
            (
                "oversized",
                |_, w| w.extend_from_slice(&[APPLICATION_DATA, 3, 3, 0x41, 0x01]),
                Error::PeerSentOversizedRecord,
                RecordOverflow,
            ),
            (
                "not protected",
                |_, w| w.extend_from_slice(&[ALERT, 3, 3, 0, 2, FATAL, 0]),
                InvalidMessage::InvalidContentType.into(),
                UnexpectedMessage,
            ),
            (
                "only padding",
                |c, w| c.seal_record(0, &[0, 0], w).expect("seal"),
                PeerMisbehaved::IllegalTlsInnerPlaintext.into(),
                UnexpectedMessage,
            ),
            (
                "change_cipher_spec",
                |c, w| c.seal_record(CHANGE_CIPHER_SPEC, &[1], w).expect("seal"),
                PeerMisbehaved::IllegalMiddleboxChangeCipherSpec.into(),
                UnexpectedMessage,
            ),
            (
                "a handshake message other than KeyUpdate",
                |c, w| c.seal_record(HANDSHAKE, &[4, 0, 0, 0], w).expect("seal"),
                Error::InappropriateHandshakeMessage {
                    expect_types: vec![HandshakeType::KeyUpdate],
                    got_type: HandshakeType::NewSessionTicket,
                },
                UnexpectedMessage,
            ),
            (
                "a KeyUpdate with a bad request",
                |c, w| {
                    c.seal_record(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 7], w)
                        .expect("seal")
                },
                InvalidMessage::InvalidKeyUpdate.into(),
                IllegalParameter,
            ),
        ];
        for (what, forge, error, alert) in cases {
            let (mut server, mut client) = pair(Suite::Aes128GcmSha256);
            let mut wire = Vec::new();
            forge(&mut client, &mut wire);
            let (got, reply) = open_all(&mut server, wire);
            assert_eq!(got, [Err(error)], "{what}");
            let (told, _) = open_all(&mut client, reply);
            assert_eq!(told, [Err(Error::AlertReceived(alert))], "{what}");
        }
    }

    /// A fatal alert from the peer ends the connection without a reply.
    #[test]
    fn a_fatal_alert_is_an_error_and_gets_no_reply() {
        let (mut server, mut client) = pair(Suite::Aes128GcmSha256);
        let mut wire = Vec::new();
        let alert = [FATAL, u8::from(AlertDescription::BadCertificate)];
        client.seal_record(ALERT, &alert, &mut wire).expect("seal");
        let (got, reply) = open_all(&mut server, wire);
        assert_eq!(
            got,
            [Err(Error::AlertReceived(AlertDescription::BadCertificate))]
        );
        assert!(reply.is_empty());
    }
}
