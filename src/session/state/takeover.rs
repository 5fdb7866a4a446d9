//! A connection for a client id that already has a session: whether it
//! resumes that session or starts a fresh one.

use crate::codec::Protocol;

/// The session a client id had when a new connection claimed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// The protocol of the connection that made it.
    pub protocol: Protocol,
    /// Its session expiry interval, in seconds.
    pub expiry: u32,
}

/// Whether a CONNECT with `clean_start` on `protocol` resumes the session
/// found (CONNACK Session Present) rather than discarding it: Clean Start
/// discards it [MQTT-3.1.2-4], otherwise it resumes [MQTT-3.1.2-5]; a
/// session whose expiry is 0 ended with its connection (§3.1.2.11.2), and
/// one made over the other protocol version is not carried across.
/// Resuming cancels a will still waiting for its delay [MQTT-3.1.3-9].
pub fn resumes(clean_start: bool, found: Option<Found>, protocol: Protocol) -> bool {
    found.is_some_and(|f| !clean_start && f.protocol == protocol && f.expiry > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_or_start_afresh() {
        let v5 = |expiry| {
            Some(Found {
                protocol: Protocol::V5,
                expiry,
            })
        };
        // (statement, clean start, session found, protocol, resumed)
        let cases = [
            (
                "MQTT-3.1.2-4: Clean Start discards the session",
                true,
                v5(60),
                Protocol::V5,
                false,
            ),
            (
                "MQTT-3.1.2-5: without Clean Start the session resumes",
                false,
                v5(60),
                Protocol::V5,
                true,
            ),
            (
                "MQTT-3.1.2-6: with no session there is nothing to resume",
                false,
                None,
                Protocol::V5,
                false,
            ),
            (
                "§3.1.2.11.2: a session with expiry 0 ended with its connection",
                false,
                v5(0),
                Protocol::V5,
                false,
            ),
            (
                "a 5.0 session is not resumed over 3.1.1",
                false,
                v5(60),
                Protocol::V4,
                false,
            ),
        ];
        for (statement, clean, found, protocol, resumed) in cases {
            assert_eq!(resumes(clean, found, protocol), resumed, "{statement}");
        }
    }
}
