//! What keeps a peer link private and proves that both ends know a herd
//! secret: the keyring of accepted secrets, their key ids, and the Noise
//! sessions that encrypt every byte of a link after its opening lines.
//! Pure: no IO, no clock, no tasks (Noise draws its ephemeral keys from the
//! operating system's random source, as `rand` does elsewhere).
//!
//! The construction is Noise `NNpsk0` over X25519, ChaCha20-Poly1305 and
//! BLAKE2s (through the `snow` crate): both ends prove the pre-shared key,
//! derived from the herd secret, and an ephemeral Diffie-Hellman gives each
//! link keys of its own, so a secret that leaks later does not open
//! recorded traffic. ARCHITECTURE.md says why this one.

use std::sync::{Arc, Mutex};

use snow::{HandshakeState, TransportState};

use super::wire::{KeyId, MAX_FRAME};

/// The Noise protocol every peer link speaks.
pub const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// The largest Noise message, its 16-byte tag included.
pub const MAX_MESSAGE: usize = 65535;
/// What Noise adds to each message it encrypts.
const AEAD_TAG: usize = 16;
/// The most frame bytes one record carries: a message less its tag and the
/// flag byte that says whether the frame goes on.
pub const CHUNK: usize = MAX_MESSAGE - AEAD_TAG - 1;
/// A record's flag byte: the last record of a frame, or one more follows.
const LAST: u8 = 1;
const MORE: u8 = 0;

/// Why a keyring or a Noise session failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no herd secret given")]
    NoSecret,
    #[error("a herd secret is empty")]
    EmptySecret,
    /// A message did not decrypt: another key, or bytes altered, dropped,
    /// repeated or reordered on the way.
    #[error("a message failed to decrypt")]
    Decrypt,
    #[error("a malformed record")]
    Malformed,
    #[error("frame of more than {MAX_FRAME} bytes")]
    TooLarge,
}

impl From<snow::Error> for AuthError {
    fn from(_: snow::Error) -> Self {
        // snow's errors say which check failed; a link only needs to know
        // that one did.
        AuthError::Decrypt
    }
}

/// One herd secret, as links use it.
pub struct Key {
    id: KeyId,
    /// Noise's pre-shared key, derived from the secret (any length of
    /// secret, a uniform 32-byte key).
    psk: [u8; 32],
}

impl Key {
    /// The key of a herd secret.
    pub fn new(secret: &[u8]) -> Key {
        let id = blake3::derive_key("herd peer links 2024-06 key id", secret);
        Key {
            id: KeyId::from_bytes([id[0], id[1], id[2], id[3]]),
            psk: blake3::derive_key("herd peer links 2024-06 noise psk", secret),
        }
    }

    /// Its key id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    fn builder<'a>(&'a self, prologue: &'a [u8]) -> snow::Builder<'a> {
        snow::Builder::new(
            NOISE_PARAMS
                .parse()
                .expect("the Noise parameters are valid"),
        )
        .prologue(prologue)
        .expect("a prologue is always accepted")
        .psk(0, &self.psk)
        .expect("NNpsk0 has a psk at position 0")
    }

    /// The dialler's side of a handshake bound to `prologue` (the opening
    /// lines both ends saw).
    pub fn initiator(&self, prologue: &[u8]) -> Handshake {
        Handshake(
            self.builder(prologue)
                .build_initiator()
                .expect("the default resolver has NNpsk0's primitives"),
        )
    }

    /// The listener's side of a handshake bound to `prologue`.
    pub fn responder(&self, prologue: &[u8]) -> Handshake {
        Handshake(
            self.builder(prologue)
                .build_responder()
                .expect("the default resolver has NNpsk0's primitives"),
        )
    }
}

/// The herd secrets a server accepts, the first the one it dials with.
pub struct Keys(Vec<Key>);

impl Keys {
    /// The keys of `secrets`, in order; at least one, none empty.
    pub fn new<S: AsRef<[u8]>>(secrets: &[S]) -> Result<Keys, AuthError> {
        if secrets.is_empty() {
            return Err(AuthError::NoSecret);
        }
        if secrets.iter().any(|secret| secret.as_ref().is_empty()) {
            return Err(AuthError::EmptySecret);
        }
        Ok(Keys(
            secrets
                .iter()
                .map(|secret| Key::new(secret.as_ref()))
                .collect(),
        ))
    }

    /// The key this server dials with.
    pub fn current(&self) -> &Key {
        self.0.first().expect("`Keys::new` keeps at least one key")
    }

    /// The accepted key with id `id`, if there is one.
    pub fn find(&self, id: KeyId) -> Option<&Key> {
        self.0.iter().find(|key| key.id == id)
    }

    /// The ids of the accepted keys, in order.
    pub fn ids(&self) -> Vec<KeyId> {
        self.0.iter().map(Key::id).collect()
    }
}

/// The keys a server holds, which may be replaced while it runs (key
/// rotation): a handshake uses the keys of the moment it starts, and a
/// link up keeps the session keys it agreed on.
pub struct Keyring(Mutex<Arc<Keys>>);

impl Keyring {
    /// A keyring of `secrets`, the first the one to dial with.
    pub fn new<S: AsRef<[u8]>>(secrets: &[S]) -> Result<Keyring, AuthError> {
        Ok(Keyring(Mutex::new(Arc::new(Keys::new(secrets)?))))
    }

    /// The keys as they are now.
    pub fn keys(&self) -> Arc<Keys> {
        self.0
            .lock()
            .expect("keyring lock is never poisoned")
            .clone()
    }

    /// Accepts `secrets` from now on, dialling with the first.
    pub fn replace<S: AsRef<[u8]>>(&self, secrets: &[S]) -> Result<(), AuthError> {
        let keys = Arc::new(Keys::new(secrets)?);
        *self.0.lock().expect("keyring lock is never poisoned") = keys;
        Ok(())
    }
}

/// A Noise handshake under way.
pub struct Handshake(HandshakeState);

impl Handshake {
    /// The next handshake message, carrying `payload` encrypted.
    pub fn write(&mut self, payload: &[u8]) -> Vec<u8> {
        let mut message = vec![0; MAX_MESSAGE];
        let length = self
            .0
            .write_message(payload, &mut message)
            .expect("handshake payloads are short");
        message.truncate(length);
        message
    }

    /// The payload of the peer's next handshake message; an error if it
    /// was not made with our key, for our prologue, in this handshake.
    pub fn read(&mut self, message: &[u8]) -> Result<Vec<u8>, AuthError> {
        let mut payload = vec![0; MAX_MESSAGE];
        let length = self.0.read_message(message, &mut payload)?;
        payload.truncate(length);
        Ok(payload)
    }

    /// The session, once the handshake is complete.
    pub fn finish(self) -> Result<Session, AuthError> {
        Ok(Session {
            transport: self.0.into_transport_mode()?,
            frame: Vec::new(),
            handed_out: false,
            plain: vec![0; MAX_MESSAGE],
            sealing: Vec::new(),
        })
    }
}

/// An encrypted link after its handshake, in both directions. Noise counts
/// the messages of each direction, so a message dropped, repeated or
/// reordered fails to decrypt.
pub struct Session {
    transport: TransportState,
    /// The frame being put together from records.
    frame: Vec<u8>,
    /// `frame` was handed out whole: the next record starts another.
    handed_out: bool,
    /// A record's plaintext as read, and as written.
    plain: Vec<u8>,
    sealing: Vec<u8>,
}

impl Session {
    /// Appends `payload` to `out` as records: each a 2-byte big-endian
    /// length and a Noise message, within Noise's 65535 bytes, whose
    /// plaintext is a flag byte (the frame's last record or not) and up to
    /// `CHUNK` bytes of the payload. An empty payload is one record.
    pub fn seal(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        let mut chunks = payload.chunks(CHUNK).peekable();
        let mut chunk: &[u8] = chunks.next().unwrap_or_default();
        loop {
            let last = chunks.peek().is_none();
            self.sealing.clear();
            self.sealing.push(if last { LAST } else { MORE });
            self.sealing.extend_from_slice(chunk);
            let start = out.len();
            out.resize(start + 2 + self.sealing.len() + AEAD_TAG, 0);
            let length = self
                .transport
                .write_message(&self.sealing, &mut out[start + 2..])
                .expect("a record fits a Noise message");
            let length = u16::try_from(length).expect("a Noise message is at most 65535 bytes");
            out[start..start + 2].copy_from_slice(&length.to_be_bytes());
            out.truncate(start + 2 + usize::from(length));
            match chunks.next() {
                Some(next) => chunk = next,
                None => return,
            }
        }
    }

    /// Decrypts one record's message (without its length); returns the
    /// whole frame once its last record is in. A frame over `MAX_FRAME`
    /// bytes is refused.
    pub fn open(&mut self, message: &[u8]) -> Result<Option<&[u8]>, AuthError> {
        if std::mem::take(&mut self.handed_out) {
            self.frame.clear();
        }
        let length = self.transport.read_message(message, &mut self.plain)?;
        let (&flag, chunk) = self.plain[..length]
            .split_first()
            .ok_or(AuthError::Malformed)?;
        if self.frame.len() + chunk.len() > MAX_FRAME {
            return Err(AuthError::TooLarge);
        }
        self.frame.extend_from_slice(chunk);
        match flag {
            LAST => {
                self.handed_out = true;
                Ok(Some(&self.frame))
            }
            MORE => Ok(None),
            _ => Err(AuthError::Malformed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(
        dialler: &Key,
        listener: &Key,
        prologues: (&[u8], &[u8]),
    ) -> Result<(Session, Session), AuthError> {
        let mut initiator = dialler.initiator(prologues.0);
        let mut responder = listener.responder(prologues.1);
        let hello = initiator.write(b"A B 7");
        assert_eq!(responder.read(&hello)?, b"A B 7");
        let welcome = responder.write(b"7 0");
        assert_eq!(initiator.read(&welcome)?, b"7 0");
        Ok((initiator.finish()?, responder.finish()?))
    }

    /// The records of `out`, each without its length.
    fn records(mut out: &[u8]) -> Vec<Vec<u8>> {
        let mut records = Vec::new();
        while let [high, low, rest @ ..] = out {
            let length = usize::from(u16::from_be_bytes([*high, *low]));
            records.push(rest[..length].to_vec());
            out = &rest[length..];
        }
        records
    }

    #[test]
    fn a_shared_key_links_and_frames_arrive_whole() {
        let key = Key::new(b"secret");
        let (mut a, mut b) = pair(&key, &key, (b"p", b"p")).unwrap();
        for payload in [&b""[..], b"U 1 AT x\nC 1\n", &vec![b'x'; 3 * CHUNK + 5]] {
            let mut out = Vec::new();
            a.seal(payload, &mut out);
            let records = records(&out);
            assert_eq!(records.len(), payload.len().div_ceil(CHUNK).max(1));
            assert!(records.iter().all(|r| r.len() <= MAX_MESSAGE));
            let (last, first) = records.split_last().unwrap();
            for record in first {
                assert_eq!(b.open(record).unwrap(), None);
            }
            assert_eq!(b.open(last).unwrap(), Some(payload));
        }
        // The other way, too (acknowledgements).
        let mut out = Vec::new();
        b.seal(b"ACK 1\n", &mut out);
        assert_eq!(a.open(&records(&out)[0]).unwrap(), Some(&b"ACK 1\n"[..]));
    }

    #[test]
    fn another_key_or_prologue_never_links() {
        let (key, other) = (Key::new(b"secret"), Key::new(b"other"));
        assert!(pair(&key, &other, (b"p", b"p")).is_err());
        assert!(pair(&key, &key, (b"p", b"q")).is_err());
        assert_ne!(key.id(), other.id());
        assert_eq!(key.id(), Key::new(b"secret").id());
    }

    #[test]
    fn altered_replayed_or_reordered_records_fail() {
        let key = Key::new(b"secret");
        let (mut a, mut b) = pair(&key, &key, (b"p", b"p")).unwrap();
        let mut out = Vec::new();
        a.seal(b"one", &mut out);
        a.seal(b"two", &mut out);
        let records = records(&out);
        // Reordered.
        assert!(b.open(&records[1]).is_err());
        let (mut a, mut b) = pair(&key, &key, (b"p", b"p")).unwrap();
        let mut out = Vec::new();
        a.seal(b"one", &mut out);
        let first = records_of(&out);
        let mut altered = first.clone();
        altered[5] ^= 1;
        assert!(b.open(&altered).is_err());
        let (mut a, mut b) = pair(&key, &key, (b"p", b"p")).unwrap();
        let mut out = Vec::new();
        a.seal(b"one", &mut out);
        let first = records_of(&out);
        assert!(b.open(&first).is_ok());
        // Replayed.
        assert!(b.open(&first).is_err());
    }

    fn records_of(out: &[u8]) -> Vec<u8> {
        records(out).remove(0)
    }

    #[test]
    fn keys_are_found_by_id_and_the_first_dials() {
        let keys = Keys::new(&["new", "old"]).unwrap();
        assert_eq!(keys.current().id(), Key::new(b"new").id());
        assert!(keys.find(Key::new(b"old").id()).is_some());
        assert!(keys.find(Key::new(b"else").id()).is_none());
        let id = keys.current().id();
        assert_eq!(KeyId::parse(&id.to_string()), Some(id));
        assert_eq!(KeyId::parse("abc"), None);
        assert!(Keys::new::<&str>(&[]).is_err());
        assert!(Keys::new(&[""]).is_err());
    }
}
