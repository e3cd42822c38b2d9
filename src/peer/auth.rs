//! What proves that a peer knows the herd's secret: the handshake's MACs
//! and each link's frame key. Pure: no IO, no clock, no tasks.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::wire::PROTOCOL_VERSION;

type HmacSha256 = Hmac<Sha256>;

/// The herd's shared secret.
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(secret: Vec<u8>) -> Self {
        Self(secret)
    }

    fn mac(&self, parts: &[&[u8]]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        for part in parts {
            // Length-prefixed, so that no two part lists authenticate alike.
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// The MAC of a hello from `from` to `to` in our protocol version, over
    /// the dialler's run and both nonces (the listener's challenge first).
    fn hello_mac(
        &self,
        from: &str,
        to: &str,
        run: &str,
        nonce_b: &[u8],
        nonce_a: &[u8],
    ) -> HmacSha256 {
        // The version is covered, so that no one between two servers can
        // make them believe they speak another version than they do.
        self.mac(&[
            b"hello",
            PROTOCOL_VERSION.as_bytes(),
            from.as_bytes(),
            to.as_bytes(),
            run.as_bytes(),
            nonce_b,
            nonce_a,
        ])
    }

    /// The tag of a hello from `from` to `to`.
    pub fn hello_tag(
        &self,
        from: &str,
        to: &str,
        run: &str,
        nonce_b: &[u8],
        nonce_a: &[u8],
    ) -> [u8; 32] {
        self.hello_mac(from, to, run, nonce_b, nonce_a)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Whether `tag` is the tag of that hello (compared in constant time).
    pub fn verify_hello(
        &self,
        from: &str,
        to: &str,
        run: &str,
        (nonce_b, nonce_a): (&[u8], &[u8]),
        tag: &[u8],
    ) -> bool {
        self.hello_mac(from, to, run, nonce_b, nonce_a)
            .verify_slice(tag)
            .is_ok()
    }

    fn welcome_mac(
        &self,
        from: &str,
        to: &str,
        cursor: (&str, &str),
        nonce_a: &[u8],
        nonce_b: &[u8],
    ) -> HmacSha256 {
        self.mac(&[
            b"welcome",
            from.as_bytes(),
            to.as_bytes(),
            cursor.0.as_bytes(),
            cursor.1.as_bytes(),
            nonce_a,
            nonce_b,
        ])
    }

    /// The tag of the listener's welcome: the cursor it holds for the
    /// dialler, over both nonces.
    pub fn welcome_tag(
        &self,
        from: &str,
        to: &str,
        cursor: (&str, &str),
        (nonce_a, nonce_b): (&[u8], &[u8]),
    ) -> [u8; 32] {
        self.welcome_mac(from, to, cursor, nonce_a, nonce_b)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Whether `tag` is the tag of that welcome (compared in constant time).
    pub fn verify_welcome(
        &self,
        from: &str,
        to: &str,
        cursor: (&str, &str),
        (nonce_a, nonce_b): (&[u8], &[u8]),
        tag: &[u8],
    ) -> bool {
        self.welcome_mac(from, to, cursor, nonce_a, nonce_b)
            .verify_slice(tag)
            .is_ok()
    }

    /// A link's frame key: derived from the herd secret and both nonces,
    /// so every session has a key of its own.
    pub fn session_key(&self, nonce_a: &[u8], nonce_b: &[u8]) -> FrameKey {
        FrameKey(
            self.mac(&[b"session", nonce_a, nonce_b])
                .finalize()
                .into_bytes()
                .into(),
        )
    }
}

/// The key that tags a link's frames.
///
/// Frames are tagged with keyed BLAKE3 (a MAC: a keyed pseudo-random
/// function) rather than HMAC-SHA256, which the handshake keeps: every
/// update crosses the herd several times, each crossing tagged by its
/// sender and checked by its receiver, and BLAKE3 tags the same bytes in a
/// fraction of the time (BENCHMARKS.md).
pub struct FrameKey([u8; 32]);

impl FrameKey {
    /// The tag of frame number `counter` (counted from 0 on each link, so
    /// that frames cannot be dropped, reordered or replayed) with `payload`.
    pub fn tag(&self, counter: u64, payload: &[u8]) -> blake3::Hash {
        let mut mac = blake3::Hasher::new_keyed(&self.0);
        mac.update(&counter.to_be_bytes());
        mac.update(payload);
        mac.finalize()
    }

    /// Seals a frame built by `wire::start_frame`: fills in the length and
    /// appends the tag of frame number `counter`.
    pub fn seal(&self, counter: u64, frame: &mut Vec<u8>) {
        let payload = &frame[4..];
        let length = u32::try_from(payload.len()).expect("frames are small");
        let tag = self.tag(counter, payload);
        frame[..4].copy_from_slice(&length.to_be_bytes());
        frame.extend_from_slice(tag.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_tags_depend_on_key_counter_and_payload() {
        let (k, x) = (FrameKey([1; 32]), FrameKey([2; 32]));
        let tag = k.tag(0, b"U 1 AT");
        assert_eq!(tag, k.tag(0, b"U 1 AT"));
        assert_ne!(tag, k.tag(1, b"U 1 AT"));
        assert_ne!(tag, x.tag(0, b"U 1 AT"));
        assert_ne!(tag, k.tag(0, b"U 2 AT"));
        // The counter has a fixed width: no payload passes for another
        // counter's.
        assert_ne!(k.tag(0, b"\x01U"), k.tag(1, b"U"));
    }

    #[test]
    fn macs_are_length_prefixed() {
        let secret = Secret::new(b"secret".to_vec());
        let a = secret.mac(&[b"ab", b"c"]).finalize().into_bytes();
        let b = secret.mac(&[b"a", b"bc"]).finalize().into_bytes();
        assert_ne!(a, b);
    }

    #[test]
    fn hello_and_welcome_tags_verify_only_for_their_own_fields() {
        let secret = Secret::new(b"secret".to_vec());
        let tag = secret.hello_tag("A", "B", "42", b"nb", b"na");
        assert!(secret.verify_hello("A", "B", "42", (b"nb", b"na"), &tag));
        assert!(!secret.verify_hello("A", "C", "42", (b"nb", b"na"), &tag));
        assert!(!Secret::new(b"other".to_vec()).verify_hello("A", "B", "42", (b"nb", b"na"), &tag));
        // The version is part of what a hello's tag covers.
        let unversioned = secret
            .mac(&[b"hello", b"A", b"B", b"42", b"nb", b"na"])
            .finalize()
            .into_bytes();
        assert_ne!(tag[..], unversioned[..]);
        let tag = secret.welcome_tag("A", "B", ("1", "2"), (b"na", b"nb"));
        assert!(secret.verify_welcome("A", "B", ("1", "2"), (b"na", b"nb"), &tag));
        assert!(!secret.verify_welcome("A", "B", ("1", "3"), (b"na", b"nb"), &tag));
    }
}
