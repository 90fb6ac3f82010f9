//! Login rate limits, per client address and per account (governor's GCRA
//! keyed limiters, in memory, per replica).
//!
//! The address limit stops one client from trying many accounts (and from
//! spending the service's Argon2 budget); the account limit stops many
//! clients from trying one account. The address is checked first, so a
//! client over its limit cannot grow the account table with made-up emails.
//! Refused attempts cost no database query and no hash.
//!
//! The account key is the normalised email, known or not: a limit that only
//! applied to existing accounts would tell which exist.
//!
//! A refusal is held for a moment (LOGIN_REFUSAL_DELAY) before it is
//! answered, on a timer, not a thread: a flooding client that does not wait
//! for its RetryInfo then gets one answer per call in flight per delay, so
//! its flood costs the service (and the machine it shares) little CPU. At
//! most [`MAX_HELD`] refusals are held at once; more are answered at once, so
//! holding cannot become a memory cost of its own.
//!
//! Memory: a key whose state no longer differs from a fresh one (its burst
//! refilled: at most one PERIOD after its last attempt) is dropped by
//! [`LoginLimits::retain_recent`], which the server runs periodically. So the
//! tables hold the clients and accounts seen within about one PERIOD, and
//! account keys only from clients under their address limit.

use crate::domain::Email;
use governor::{DefaultKeyedRateLimiter, Quota, clock::Clock as _};
use ipnet::IpNet;
use std::{
    hash::Hash,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

/// The metadata a trusted proxy names the real client in.
pub const CLIENT_ADDR_HEADER: &str = "x-client-addr";

/// Refusals held at once, at most (each a parked future of a few KiB).
pub const MAX_HELD: usize = 1024;

/// `N/PERIOD`: a burst of N attempts, refilled at N per PERIOD (one every
/// PERIOD/N). `off` (or `0`) turns the limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate(Option<(NonZeroU32, Duration)>);

impl Rate {
    pub const OFF: Self = Self(None);

    fn quota(self) -> Option<Quota> {
        let (n, per) = self.0?;
        Some(Quota::with_period(per / n.get())?.allow_burst(n))
    }
}

impl std::str::FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "0" || s.eq_ignore_ascii_case("off") {
            return Ok(Self::OFF);
        }
        let usage = || format!("`{s}` is not a rate: write N/PERIOD (e.g. 10/1m) or off");
        let (n, per) = s.split_once('/').ok_or_else(usage)?;
        let n: u32 = n.trim().parse().map_err(|_| usage())?;
        let per = svc_kit::config::parse_duration(per)?;
        match NonZeroU32::new(n) {
            None => Ok(Self::OFF),
            Some(_) if per.is_zero() => Err(usage()),
            Some(n) => Ok(Self(Some((n, per)))),
        }
    }
}

/// The peers allowed to name the client they call for (`x-client-addr`): a
/// comma-separated list of CIDRs or addresses; `none` trusts no one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedProxies(Arc<[IpNet]>);

impl TrustedProxies {
    fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }
}

impl std::str::FromStr for TrustedProxies {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().is_empty() || s.trim().eq_ignore_ascii_case("none") {
            return Ok(Self(Arc::from([])));
        }
        s.split(',')
            .map(|part| {
                let part = part.trim();
                part.parse::<IpNet>()
                    .or_else(|_| part.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("`{part}` is not a CIDR (e.g. 10.0.0.0/8) or an address"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|nets| Self(nets.into()))
    }
}

/// Whom a login is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Client {
    /// The client's address (IPv6: its /64, what one host usually gets).
    Addr(IpAddr),
    /// A trusted proxy calling without naming a client: a service, an
    /// operator or a test calling for itself. Not limited by address (it
    /// could name any address anyway), only by account.
    Trusted,
}

/// A refusal: come back after `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limited {
    pub(crate) retry_after: Duration,
    pub(crate) scope: &'static str,
}

type Limiter<K> = Arc<DefaultKeyedRateLimiter<K>>;

#[derive(Debug, Clone)]
pub(crate) struct LoginLimits {
    by_addr: Option<Limiter<IpAddr>>,
    by_account: Option<Limiter<String>>,
    trusted: TrustedProxies,
    refusal_delay: Duration,
    held: Arc<AtomicUsize>,
}

/// Counts a refusal as held for as long as it is.
struct Held(Arc<AtomicUsize>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn check<K: Hash + Eq + Clone>(
    limiter: &Option<Limiter<K>>,
    key: &K,
    scope: &'static str,
) -> Result<(), Limited> {
    let Some(limiter) = limiter else {
        return Ok(());
    };
    limiter.check_key(key).map_err(|not_until| {
        metrics::counter!("mp3converter_auth_rate_limited_total", "scope" => scope).increment(1);
        Limited {
            retry_after: not_until.wait_time_from(limiter.clock().now()),
            scope,
        }
    })
}

impl LoginLimits {
    pub(crate) fn new(
        per_addr: Rate,
        per_account: Rate,
        trusted: TrustedProxies,
        refusal_delay: Duration,
    ) -> Self {
        Self {
            by_addr: per_addr
                .quota()
                .map(|q| Arc::new(DefaultKeyedRateLimiter::keyed(q))),
            by_account: per_account
                .quota()
                .map(|q| Arc::new(DefaultKeyedRateLimiter::keyed(q))),
            trusted,
            refusal_delay,
            held: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Counts an attempt against the client's address; a refusal comes
    /// after the refusal delay.
    pub(crate) async fn admit_client(&self, client: Client) -> Result<(), Limited> {
        match self.check_client(client) {
            Ok(()) => Ok(()),
            Err(limited) => Err(self.hold(limited).await),
        }
    }

    /// Counts an attempt against the account; a refusal comes after the
    /// refusal delay.
    pub(crate) async fn admit_account(&self, email: &Email) -> Result<(), Limited> {
        match self.check_account(email) {
            Ok(()) => Ok(()),
            Err(limited) => Err(self.hold(limited).await),
        }
    }

    /// Waits out the refusal delay (never longer than the retry delay, and
    /// not at all when too many are held), and says how much of the retry
    /// delay is left.
    async fn hold(&self, limited: Limited) -> Limited {
        let hold = self.refusal_delay.min(limited.retry_after);
        let already = self.held.fetch_add(1, Ordering::AcqRel);
        let _held = Held(self.held.clone());
        if hold.is_zero() || already >= MAX_HELD {
            return limited;
        }
        tokio::time::sleep(hold).await;
        Limited {
            retry_after: limited.retry_after.saturating_sub(hold),
            ..limited
        }
    }

    /// The client a call counts against: the peer's address, unless the peer
    /// is a trusted proxy, whose `x-client-addr` (an address, with or without
    /// a port) names the client instead.
    pub(crate) fn client(&self, peer: Option<SocketAddr>, named: Option<&str>) -> Client {
        let Some(peer) = peer.map(|p| p.ip().to_canonical()) else {
            // Not a TCP connection (in-process): nobody outside can call so.
            return Client::Trusted;
        };
        if !self.trusted.contains(peer) {
            return Client::Addr(key_of(peer));
        }
        let Some(named) = named.map(str::trim).filter(|n| !n.is_empty()) else {
            return Client::Trusted;
        };
        match named
            .parse::<IpAddr>()
            .or_else(|_| named.parse::<SocketAddr>().map(|s| s.ip()))
        {
            Ok(ip) => Client::Addr(key_of(ip.to_canonical())),
            Err(_) => {
                tracing::warn!(%peer, value = named, "trusted proxy sent an unparsable {CLIENT_ADDR_HEADER}");
                Client::Trusted
            }
        }
    }

    /// Counts an attempt against the client's address.
    fn check_client(&self, client: Client) -> Result<(), Limited> {
        match client {
            Client::Addr(ip) => check(&self.by_addr, &ip, "address"),
            Client::Trusted => Ok(()),
        }
    }

    /// Counts an attempt against the account.
    fn check_account(&self, email: &Email) -> Result<(), Limited> {
        check(&self.by_account, &email.as_str().to_owned(), "account")
    }

    /// Forgets the keys that are back to a fresh state.
    pub(crate) fn retain_recent(&self) {
        if let Some(l) = &self.by_addr {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.by_account {
            l.retain_recent();
            l.shrink_to_fit();
        }
        metrics::gauge!("mp3converter_auth_rate_limit_keys", "scope" => "address")
            .set(self.by_addr.as_ref().map_or(0, |l| l.len()) as f64);
        metrics::gauge!("mp3converter_auth_rate_limit_keys", "scope" => "account")
            .set(self.by_account.as_ref().map_or(0, |l| l.len()) as f64);
    }

    #[cfg(test)]
    fn keys(&self) -> (usize, usize) {
        (
            self.by_addr.as_ref().map_or(0, |l| l.len()),
            self.by_account.as_ref().map_or(0, |l| l.len()),
        )
    }
}

/// IPv4 addresses as they are; IPv6 by /64, since one host (or one
/// attacker) is commonly handed a whole /64 to pick addresses from.
fn key_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(
            v6.to_bits() & 0xffff_ffff_ffff_ffff_0000_0000_0000_0000,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(addr: &str, account: &str, trusted: &str) -> LoginLimits {
        LoginLimits::new(
            addr.parse().unwrap(),
            account.parse().unwrap(),
            trusted.parse().unwrap(),
            Duration::ZERO,
        )
    }

    fn sock(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn rates_parse() {
        assert_eq!("off".parse::<Rate>().unwrap(), Rate::OFF);
        assert_eq!("0".parse::<Rate>().unwrap(), Rate::OFF);
        assert_eq!("0/1m".parse::<Rate>().unwrap(), Rate::OFF);
        let r: Rate = "10/1m".parse().unwrap();
        let q = r.quota().unwrap();
        assert_eq!(q.burst_size().get(), 10);
        assert_eq!(q.replenish_interval(), Duration::from_secs(6));
        for bad in ["10", "x/1m", "10/", "10/1y", "5/0s", "-1/1m"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn trusted_proxies_parse() {
        let t: TrustedProxies = "127.0.0.0/8, ::1/128,10.1.2.3".parse().unwrap();
        assert!(t.contains("127.9.9.9".parse().unwrap()));
        assert!(t.contains("::1".parse().unwrap()));
        assert!(t.contains("10.1.2.3".parse().unwrap()));
        assert!(!t.contains("10.1.2.4".parse().unwrap()));
        let none: TrustedProxies = "none".parse().unwrap();
        assert!(!none.contains("127.0.0.1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<TrustedProxies>().is_err());
        assert!("gateway".parse::<TrustedProxies>().is_err());
    }

    #[test]
    fn the_client_is_the_peer_unless_a_trusted_proxy_names_one() {
        let l = limits("off", "off", "127.0.0.1/32");
        let ip = |s: &str| Client::Addr(s.parse().unwrap());
        // An untrusted peer cannot choose its key.
        assert_eq!(
            l.client(sock("192.0.2.1:4000"), Some("198.51.100.7")),
            ip("192.0.2.1")
        );
        // A trusted one names the client, with or without a port.
        assert_eq!(
            l.client(sock("127.0.0.1:4000"), Some("198.51.100.7")),
            ip("198.51.100.7")
        );
        assert_eq!(
            l.client(sock("127.0.0.1:4000"), Some("198.51.100.7:5555")),
            ip("198.51.100.7")
        );
        assert_eq!(
            l.client(sock("127.0.0.1:4000"), Some("[2001:db8::1]:5555")),
            ip("2001:db8::")
        );
        // Naming nobody (or garbage), it calls for itself.
        assert_eq!(l.client(sock("127.0.0.1:4000"), None), Client::Trusted);
        assert_eq!(
            l.client(sock("127.0.0.1:4000"), Some("not an address")),
            Client::Trusted
        );
        // IPv6 by /64; IPv4-mapped IPv6 as IPv4 (and so trusted here).
        assert_eq!(
            l.client(sock("[2001:db8:1:2:aaaa::1]:1"), None),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            l.client(sock("[::ffff:127.0.0.1]:1"), Some("192.0.2.9")),
            ip("192.0.2.9")
        );
    }

    #[test]
    fn addresses_and_accounts_are_limited_separately_with_a_retry_delay() {
        let l = limits("3/1m", "2/1m", "none");
        let a = Client::Addr("192.0.2.1".parse().unwrap());
        let b = Client::Addr("192.0.2.2".parse().unwrap());
        for _ in 0..3 {
            assert!(l.check_client(a).is_ok());
        }
        let refused = l.check_client(a).unwrap_err();
        assert_eq!(refused.scope, "address");
        // One attempt comes back every 20 s.
        assert!(
            (Duration::from_secs(19)..=Duration::from_secs(20)).contains(&refused.retry_after),
            "{refused:?}"
        );
        assert!(l.check_client(b).is_ok(), "another address is not affected");
        assert!(l.check_client(Client::Trusted).is_ok());

        let alice = Email::parse("Alice@Example.com").unwrap();
        let alice_again = Email::parse(" alice@example.COM").unwrap();
        assert!(l.check_account(&alice).is_ok());
        assert!(l.check_account(&alice_again).is_ok());
        let refused = l.check_account(&alice).unwrap_err();
        assert_eq!(refused.scope, "account");
        assert!(refused.retry_after > Duration::from_secs(25), "{refused:?}");
        assert!(
            l.check_account(&Email::parse("bob@example.com").unwrap())
                .is_ok()
        );
        assert_eq!(l.keys(), (2, 2));
    }

    #[test]
    fn idle_keys_are_forgotten() {
        // One attempt per 10 ms: a key is fresh again 10 ms after its last use.
        let l = limits("1/10ms", "1/10ms", "none");
        for i in 0..100u8 {
            let _ = l.check_client(Client::Addr(IpAddr::from([192, 0, 2, i])));
            let _ = l.check_account(&Email::parse(&format!("u{i}@example.com")).unwrap());
        }
        assert_eq!(l.keys(), (100, 100));
        std::thread::sleep(Duration::from_millis(50));
        l.retain_recent();
        assert_eq!(l.keys(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_are_held_for_the_delay_but_not_past_the_retry_delay() {
        let l = LoginLimits::new(
            "1/1m".parse().unwrap(),
            "1/3s".parse().unwrap(),
            "none".parse().unwrap(),
            Duration::from_secs(5),
        );
        let a = Client::Addr("192.0.2.1".parse().unwrap());
        let started = tokio::time::Instant::now();
        assert!(l.admit_client(a).await.is_ok());
        assert_eq!(started.elapsed(), Duration::ZERO, "admitted at once");
        let refused = l.admit_client(a).await.unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        // What is left of the minute after the hold.
        assert!(
            (Duration::from_secs(54)..=Duration::from_secs(55)).contains(&refused.retry_after),
            "{refused:?}"
        );
        // A retry delay shorter than the hold bounds it.
        let e = Email::parse("a@example.com").unwrap();
        assert!(l.admit_account(&e).await.is_ok());
        let started = tokio::time::Instant::now();
        let refused = l.admit_account(&e).await.unwrap_err();
        assert!(started.elapsed() <= Duration::from_secs(3));
        assert_eq!(refused.retry_after, Duration::ZERO);
        assert_eq!(l.held.load(Ordering::Acquire), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_max_held_refusals_are_held() {
        let l = LoginLimits::new(
            "1/1h".parse().unwrap(),
            "off".parse().unwrap(),
            "none".parse().unwrap(),
            Duration::from_secs(1),
        );
        let a = Client::Addr("192.0.2.1".parse().unwrap());
        assert!(l.admit_client(a).await.is_ok());
        let held: Vec<_> = (0..MAX_HELD)
            .map(|_| {
                let l = l.clone();
                tokio::spawn(async move { l.admit_client(a).await })
            })
            .collect();
        while l.held.load(Ordering::Acquire) < MAX_HELD {
            tokio::task::yield_now().await;
        }
        let started = tokio::time::Instant::now();
        assert!(l.admit_client(a).await.is_err());
        assert_eq!(started.elapsed(), Duration::ZERO, "answered at once");
        for h in held {
            assert!(h.await.unwrap().is_err());
        }
        assert_eq!(l.held.load(Ordering::Acquire), 0);
    }

    #[test]
    fn off_limits_nothing() {
        let l = limits("off", "off", "none");
        let a = Client::Addr("192.0.2.1".parse().unwrap());
        let e = Email::parse("a@example.com").unwrap();
        for _ in 0..1000 {
            assert!(l.check_client(a).is_ok());
            assert!(l.check_account(&e).is_ok());
        }
    }
}
