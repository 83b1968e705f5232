//! One Engine.IO session as a pure state machine: heartbeat, the polling→WebSocket upgrade,
//! and why it closed. Time is passed in (`now`), never read, so a ping-timeout test runs in
//! microseconds (quinn-proto's shape: `handle_packet`, `handle_timeout(now)`, `poll_timeout`).
//!
//! Heartbeat as the reference server does it: `pingInterval` after the handshake (or after the
//! last pong) the server sends a ping; if no pong comes within `pingTimeout`, the session
//! closes with "ping timeout".
//!
//! Upgrade: a WebSocket for the sid answers `2probe` with `3probe`; the pending poll is then
//! released with `noop`; `5` (upgrade) switches the session to the WebSocket. Any other
//! packet on the probing WebSocket, or no `5` within the upgrade timeout, aborts the upgrade
//! (the session stays on polling).
//!
//! Must never: hold sockets or buffers, or read a clock.

use std::time::{Duration, Instant};

use super::packet::PacketType;
use super::query::Transport;

/// Heartbeat and upgrade timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub upgrade_timeout: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            ping_interval: Duration::from_millis(25_000),
            ping_timeout: Duration::from_millis(20_000),
            upgrade_timeout: Duration::from_millis(10_000),
        }
    }
}

/// Why a session ended; the texts are the reference server's reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent a close packet, or its connection went away.
    TransportClose,
    /// No pong within pingTimeout.
    PingTimeout,
    /// A protocol or I/O error on the transport.
    TransportError,
    /// The server closed it.
    ForcedClose,
    /// The client sent something that could not be decoded.
    ParseError,
    /// The server is shutting down.
    ServerShutdown,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::TransportClose => "transport close",
            CloseReason::PingTimeout => "ping timeout",
            CloseReason::TransportError => "transport error",
            CloseReason::ForcedClose => "forced close",
            CloseReason::ParseError => "parse error",
            CloseReason::ServerShutdown => "server shutting down",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Heartbeat {
    /// Next ping is due at this instant.
    PingAt(Instant),
    /// A ping went out; the pong is due by this instant.
    PongBy(Instant),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upgrade {
    None,
    /// A WebSocket is probing; it must send `5` by the deadline. `probed` once `2probe` came.
    Probing {
        deadline: Instant,
        probed: bool,
    },
    Done,
}

/// What the driver must do after a packet or a timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing to do.
    None,
    /// Hand the message to the layer above (Socket.IO or the echo handler).
    Deliver,
    /// Send a ping on the active transport.
    SendPing,
    /// Answer the probe on the upgrading WebSocket with `3probe`, and release a pending poll
    /// with `noop`.
    ProbeAccepted,
    /// The upgrade is complete: the WebSocket is now the transport; flush what was buffered
    /// for polling onto it and end the polling side.
    Upgraded,
    /// The upgrade failed: close the probing WebSocket; the session stays on polling.
    AbortUpgrade,
    /// The session is over: close its transports and tell the layer above why.
    Close(CloseReason),
}

/// The state of one session.
#[derive(Debug, Clone)]
pub struct Session {
    cfg: SessionConfig,
    transport: Transport,
    heartbeat: Heartbeat,
    upgrade: Upgrade,
    closed: Option<CloseReason>,
}

impl Session {
    /// A session that has just sent its open packet over `transport`.
    pub fn new(cfg: SessionConfig, transport: Transport, now: Instant) -> Session {
        Session {
            cfg,
            transport,
            heartbeat: Heartbeat::PingAt(now + cfg.ping_interval),
            upgrade: if transport == Transport::WebSocket { Upgrade::Done } else { Upgrade::None },
            closed: None,
        }
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    pub fn closed(&self) -> Option<CloseReason> {
        self.closed
    }

    /// Whether a WebSocket upgrade is under way.
    pub fn is_upgrading(&self) -> bool {
        matches!(self.upgrade, Upgrade::Probing { .. })
    }

    /// Whether the session was upgraded (or opened) on WebSocket.
    pub fn is_upgraded(&self) -> bool {
        self.upgrade == Upgrade::Done
    }

    /// A WebSocket for this sid asks to upgrade. Refused (`false`) when the session is already
    /// upgraded or upgrading, as the reference server does.
    pub fn begin_upgrade(&mut self, now: Instant) -> bool {
        if self.closed.is_some() || self.upgrade != Upgrade::None {
            return false;
        }
        self.upgrade = Upgrade::Probing { deadline: now + self.cfg.upgrade_timeout, probed: false };
        true
    }

    /// The probing WebSocket went away: the session stays on polling and may try again.
    pub fn abort_upgrade(&mut self) {
        if self.is_upgrading() {
            self.upgrade = Upgrade::None;
        }
    }

    fn close(&mut self, reason: CloseReason) -> Action {
        if self.closed.is_none() {
            self.closed = Some(reason);
        }
        Action::Close(reason)
    }

    /// The server closes the session (or the transport reported an error or went away).
    pub fn close_with(&mut self, reason: CloseReason) -> Action {
        self.close(reason)
    }

    /// A packet of type `ty` (with text `data`) arrived over `via`.
    pub fn handle_packet(&mut self, now: Instant, via: Transport, ty: PacketType, data: &[u8]) -> Action {
        if self.closed.is_some() {
            return Action::None;
        }
        if via != self.transport {
            // Only the probing WebSocket may speak besides the active transport.
            return match (self.upgrade, ty) {
                (Upgrade::Probing { deadline, probed: false }, PacketType::Ping) if data == b"probe" => {
                    self.upgrade = Upgrade::Probing { deadline, probed: true };
                    Action::ProbeAccepted
                }
                (Upgrade::Probing { probed: true, .. }, PacketType::Upgrade) => {
                    self.upgrade = Upgrade::Done;
                    self.transport = Transport::WebSocket;
                    Action::Upgraded
                }
                (Upgrade::Probing { .. }, _) => {
                    self.upgrade = Upgrade::None;
                    Action::AbortUpgrade
                }
                _ => Action::None,
            };
        }
        match ty {
            PacketType::Pong => {
                if let Heartbeat::PongBy(_) = self.heartbeat {
                    self.heartbeat = Heartbeat::PingAt(now + self.cfg.ping_interval);
                }
                Action::None
            }
            PacketType::Message => Action::Deliver,
            PacketType::Close => self.close(CloseReason::TransportClose),
            // A client never sends open or noop, nor upgrade on the active transport, nor pings
            // in v4 (the server pings); the reference server treats unexpected packets as a
            // parse error.
            PacketType::Open | PacketType::Noop | PacketType::Upgrade | PacketType::Ping => self.close(CloseReason::ParseError),
        }
    }

    /// A binary message arrived over `via`.
    pub fn handle_binary(&mut self, via: Transport) -> Action {
        if self.closed.is_some() {
            return Action::None;
        }
        if via != self.transport {
            if self.is_upgrading() {
                self.upgrade = Upgrade::None;
                return Action::AbortUpgrade;
            }
            return Action::None;
        }
        Action::Deliver
    }

    /// The earliest instant at which [`Session::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed.is_some() {
            return None;
        }
        let hb = match self.heartbeat {
            Heartbeat::PingAt(t) | Heartbeat::PongBy(t) => t,
        };
        match self.upgrade {
            Upgrade::Probing { deadline, .. } => Some(hb.min(deadline)),
            _ => Some(hb),
        }
    }

    /// Advances timers to `now`. Call again while it returns something other than `None`.
    pub fn handle_timeout(&mut self, now: Instant) -> Action {
        if self.closed.is_some() {
            return Action::None;
        }
        if let Upgrade::Probing { deadline, .. } = self.upgrade {
            if now >= deadline {
                self.upgrade = Upgrade::None;
                return Action::AbortUpgrade;
            }
        }
        match self.heartbeat {
            Heartbeat::PingAt(t) if now >= t => {
                self.heartbeat = Heartbeat::PongBy(now + self.cfg.ping_timeout);
                Action::SendPing
            }
            Heartbeat::PongBy(t) if now >= t => self.close(CloseReason::PingTimeout),
            _ => Action::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PacketType as P;
    use Transport::*;

    fn cfg() -> SessionConfig {
        SessionConfig { ping_interval: Duration::from_millis(300), ping_timeout: Duration::from_millis(200), upgrade_timeout: Duration::from_millis(1000) }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn heartbeat_pings_and_times_out_without_sleeping() {
        let t0 = Instant::now();
        let mut s = Session::new(cfg(), WebSocket, t0);
        assert_eq!(s.poll_timeout(), Some(t0 + ms(300)));
        assert_eq!(s.handle_timeout(t0 + ms(299)), Action::None);
        assert_eq!(s.handle_timeout(t0 + ms(300)), Action::SendPing);
        assert_eq!(s.poll_timeout(), Some(t0 + ms(500)));
        // A pong in time schedules the next ping an interval after it.
        assert_eq!(s.handle_packet(t0 + ms(350), WebSocket, P::Pong, b""), Action::None);
        assert_eq!(s.poll_timeout(), Some(t0 + ms(650)));
        assert_eq!(s.handle_timeout(t0 + ms(650)), Action::SendPing);
        // No pong: closed with "ping timeout" exactly pingTimeout later.
        assert_eq!(s.handle_timeout(t0 + ms(849)), Action::None);
        assert_eq!(s.handle_timeout(t0 + ms(850)), Action::Close(CloseReason::PingTimeout));
        assert_eq!(s.closed().map(CloseReason::as_str), Some("ping timeout"));
        assert_eq!(s.poll_timeout(), None);
        assert_eq!(s.handle_packet(t0 + ms(900), WebSocket, P::Message, b"x"), Action::None);
    }

    #[test]
    fn a_late_or_unsolicited_pong_does_not_reset_the_schedule() {
        let t0 = Instant::now();
        let mut s = Session::new(cfg(), Polling, t0);
        assert_eq!(s.handle_packet(t0 + ms(10), Polling, P::Pong, b""), Action::None);
        assert_eq!(s.poll_timeout(), Some(t0 + ms(300)));
    }

    #[test]
    fn upgrade_probe_then_upgrade() {
        let t0 = Instant::now();
        let mut s = Session::new(cfg(), Polling, t0);
        assert!(s.begin_upgrade(t0));
        assert!(!s.begin_upgrade(t0), "a second WebSocket is refused while upgrading");
        assert_eq!(s.handle_packet(t0, Polling, P::Message, b"x"), Action::Deliver);
        assert_eq!(s.handle_packet(t0, WebSocket, P::Ping, b"probe"), Action::ProbeAccepted);
        assert_eq!(s.handle_packet(t0, WebSocket, P::Upgrade, b""), Action::Upgraded);
        assert_eq!(s.transport(), WebSocket);
        assert!(s.is_upgraded());
        assert!(!s.begin_upgrade(t0), "a second WebSocket for an upgraded sid is refused");
        // Polling is no longer the transport: its packets are ignored.
        assert_eq!(s.handle_packet(t0, Polling, P::Message, b"x"), Action::None);
        assert_eq!(s.handle_packet(t0, WebSocket, P::Message, b"x"), Action::Deliver);
    }

    #[test]
    fn upgrade_aborts_on_wrong_packet_or_timeout() {
        let t0 = Instant::now();
        let mut s = Session::new(cfg(), Polling, t0);
        assert!(s.begin_upgrade(t0));
        assert_eq!(s.handle_packet(t0, WebSocket, P::Upgrade, b""), Action::AbortUpgrade, "5 before the probe");
        assert!(s.begin_upgrade(t0));
        assert_eq!(s.poll_timeout(), Some(t0 + ms(300)));
        assert_eq!(s.handle_timeout(t0 + ms(300)), Action::SendPing);
        assert_eq!(s.handle_packet(t0 + ms(301), Polling, P::Pong, b""), Action::None);
        assert_eq!(s.poll_timeout(), Some(t0 + ms(601)));
        assert_eq!(s.handle_timeout(t0 + ms(601)), Action::SendPing);
        assert_eq!(s.handle_packet(t0 + ms(700), Polling, P::Pong, b""), Action::None);
        assert_eq!(s.handle_timeout(t0 + ms(1000)), Action::AbortUpgrade);
        assert_eq!(s.transport(), Polling);
        assert!(s.begin_upgrade(t0 + ms(1001)), "a new attempt may follow a failed one");
    }

    #[test]
    fn close_packet_and_protocol_errors() {
        let t0 = Instant::now();
        let mut s = Session::new(cfg(), WebSocket, t0);
        assert_eq!(s.handle_packet(t0, WebSocket, P::Close, b""), Action::Close(CloseReason::TransportClose));
        let mut s = Session::new(cfg(), WebSocket, t0);
        assert_eq!(s.handle_packet(t0, WebSocket, P::Open, b""), Action::Close(CloseReason::ParseError));
        let mut s = Session::new(cfg(), Polling, t0);
        assert_eq!(s.handle_binary(Polling), Action::Deliver);
        assert_eq!(s.close_with(CloseReason::ForcedClose), Action::Close(CloseReason::ForcedClose));
        assert_eq!(s.handle_binary(Polling), Action::None);
    }
}
