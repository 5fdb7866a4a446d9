//! Keep alive: a client silent for one and a half times its keep alive is
//! gone [MQTT-3.1.2-24 in 3.1.1, MQTT-3.1.2-22 in 5.0]. Time is passed in.

use std::time::Duration;
use tokio::time::Instant;

/// When a connection is to be judged idle.
#[derive(Debug, Clone, Copy)]
pub struct KeepAlive {
    period: Duration,
    deadline: Instant,
}

/// What the keep-alive timer found when it fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The client was silent too long: the connection ends.
    Expired,
    /// Not yet: the timer is to fire again at this instant.
    Later(Instant),
}

impl KeepAlive {
    /// Keep alive of `secs` (as negotiated, never 0), counted from `now`.
    pub fn new(secs: u16, now: Instant) -> Self {
        let period = Duration::from_millis(u64::from(secs) * 1500);
        Self {
            period,
            deadline: now + period,
        }
    }

    /// A packet arrived at `now`.
    pub fn heard(&mut self, now: Instant) {
        self.deadline = now + self.period;
    }

    /// When the connection is idle unless a packet comes first.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The timer fired at `now`. A client the gateway is not reading (its
    /// acknowledgements wait for the store, or it is paced) cannot be judged
    /// idle: its silence is the gateway's doing.
    pub fn check(&mut self, now: Instant, reading: bool) -> Check {
        if !reading {
            self.heard(now);
        }
        if now < self.deadline {
            Check::Later(self.deadline)
        } else {
            Check::Expired
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_and_a_half_times_the_keep_alive() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // (statement, keep alive, last packet after, fired after, reading, expired)
        let cases = [
            (
                "MQTT-3.1.2-22: silent for 1.5 x 10 s is gone",
                10,
                None,
                15,
                true,
                true,
            ),
            (
                "MQTT-3.1.2-22: silent for less is not",
                10,
                None,
                14,
                true,
                false,
            ),
            (
                "a packet at 10 s moves the deadline to 25 s",
                10,
                Some(10),
                20,
                true,
                false,
            ),
            (
                "a packet at 10 s: silent until 25 s is gone",
                10,
                Some(10),
                25,
                true,
                true,
            ),
            (
                "a client the gateway does not read is never idle",
                10,
                None,
                60,
                false,
                false,
            ),
        ];
        for (statement, secs, packet, fired, reading, expired) in cases {
            let mut k = KeepAlive::new(secs, t0);
            if let Some(at) = packet {
                k.heard(t0 + s(at));
            }
            let got = k.check(t0 + s(fired), reading);
            assert_eq!(got == Check::Expired, expired, "{statement}");
            if let Check::Later(at) = got {
                assert!(at > t0 + s(fired), "{statement}: fires again later");
            }
        }
    }
}
