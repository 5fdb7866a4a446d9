//! The will: whether it is published when a connection ends, and after
//! how long.

use super::end::End;

/// Seconds after which the will of a connection that ended so is
/// published, or `None` if it is not: the ending must call for it, and the
/// policy (`allowed`, asked only then) must still allow its topic. The
/// delay is the Will Delay Interval, cut short by the end of the session
/// (§3.1.3.2); a session taken over continues at once, which cancels a
/// delayed will [MQTT-3.1.3-9].
pub fn delay(
    end: &End,
    will_delay: u32,
    expiry: u32,
    allowed: impl FnOnce() -> bool,
) -> Option<u32> {
    if !end.publishes_will() || !allowed() {
        return None;
    }
    let delay = will_delay.min(expiry);
    (!(*end == End::TakenOver && delay > 0)).then_some(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn when_the_will_goes_out() {
        // (statement, end, will delay, session expiry, allowed, delay)
        let cases = [
            (
                "MQTT-3.1.2-8: a lost connection publishes the will",
                End::Io,
                0,
                0,
                true,
                Some(0),
            ),
            (
                "MQTT-3.14.4-3: a normal DISCONNECT discards it",
                End::Client { will: false },
                0,
                0,
                true,
                None,
            ),
            (
                "§3.14.2.1: 0x04 publishes it",
                End::Client { will: true },
                0,
                60,
                true,
                Some(0),
            ),
            (
                "§3.1.3.2: the Will Delay Interval delays it",
                End::Io,
                30,
                60,
                true,
                Some(30),
            ),
            (
                "§3.1.3.2: the session's end cuts the delay short",
                End::Io,
                30,
                10,
                true,
                Some(10),
            ),
            (
                "MQTT-3.1.3-9: a takeover cancels a delayed will",
                End::TakenOver,
                30,
                60,
                true,
                None,
            ),
            (
                "MQTT-3.1.4-3: a takeover publishes an undelayed will",
                End::TakenOver,
                0,
                60,
                true,
                Some(0),
            ),
            (
                "AWS IoT: a will whose topic is no longer allowed is not published",
                End::Io,
                0,
                0,
                false,
                None,
            ),
            (
                "a revoked certificate's will is not published",
                End::Revoked,
                0,
                0,
                true,
                None,
            ),
        ];
        for (statement, end, will_delay, expiry, allowed, want) in cases {
            assert_eq!(
                delay(&end, will_delay, expiry, || allowed),
                want,
                "{statement}"
            );
        }
    }
}
