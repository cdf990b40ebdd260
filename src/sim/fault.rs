//! Faults the simulator injects into its own feed, so the relay's handling of a
//! misbehaving exchange can be tested: `simulate --fault KIND[,KIND...]`.

use std::str::FromStr;
use std::time::{Duration, Instant};

/// One kind of misbehaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Close every connection cleanly (Close 1001).
    Drop,
    /// Reset every connection (TCP RST: SO_LINGER 0, then close).
    Reset,
    /// Keep sockets open and send nothing, for the fault's duration.
    Stall,
    /// Send a text frame that is not JSON.
    Garbage,
    /// Send a binary frame.
    Binary,
    /// Send a text frame larger than any client should accept (17 MiB).
    Oversized,
    /// Skip ahead in every product's sequence and trade ids.
    Skip,
    /// Refuse new connections for the fault's duration.
    Refuse,
    /// Answer handshakes only after the fault's duration.
    SlowHandshake,
    /// Refuse subscribe requests for the fault's duration: an `error` naming no
    /// product, and no `subscriptions` reply; nothing is applied.
    Reject,
}

impl Fault {
    pub const ALL: [Fault; 10] = [
        Fault::Drop,
        Fault::Reset,
        Fault::Stall,
        Fault::Garbage,
        Fault::Binary,
        Fault::Oversized,
        Fault::Skip,
        Fault::Refuse,
        Fault::SlowHandshake,
        Fault::Reject,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Drop => "drop",
            Fault::Reset => "reset",
            Fault::Stall => "stall",
            Fault::Garbage => "garbage",
            Fault::Binary => "binary",
            Fault::Oversized => "oversized",
            Fault::Skip => "skip",
            Fault::Refuse => "refuse",
            Fault::SlowHandshake => "slow-handshake",
            Fault::Reject => "reject",
        }
    }
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Fault::ALL.into_iter().find(|f| f.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
            format!("unknown fault {s:?} (one of {})", names.join(", "))
        })
    }
}

/// Faults in effect for a while (stall, refuse, slow handshake).
#[derive(Debug, Default)]
pub struct Windows {
    pub stall_until: Option<Instant>,
    pub refuse_until: Option<Instant>,
    pub slow_until: Option<Instant>,
    pub reject_until: Option<Instant>,
}

impl Windows {
    fn active(until: Option<Instant>, now: Instant) -> bool {
        until.is_some_and(|u| now < u)
    }

    pub fn stalled(&self, now: Instant) -> bool {
        Self::active(self.stall_until, now)
    }

    pub fn refusing(&self, now: Instant) -> bool {
        Self::active(self.refuse_until, now)
    }

    pub fn rejecting(&self, now: Instant) -> bool {
        Self::active(self.reject_until, now)
    }

    /// How long a handshake starting now must wait.
    pub fn handshake_delay(&self, now: Instant) -> Option<Duration> {
        self.slow_until.filter(|u| now < *u).map(|u| u - now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for f in Fault::ALL {
            assert_eq!(f.name().parse::<Fault>(), Ok(f));
        }
        assert!("explode".parse::<Fault>().unwrap_err().contains("slow-handshake"));
    }
}
