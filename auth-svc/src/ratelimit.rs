//! Login rate limits (GCRA, keyed, in memory, per replica), counting
//! **failed** attempts, as OWASP and the common identity providers do: a
//! person who logs in many times is never locked out by it.
//!
//! - Per client address (`LOGIN_LIMIT_PER_ADDR`): stops one client from
//!   trying many accounts, and from spending the service's Argon2 budget.
//! - Per account *and* address (`LOGIN_LIMIT_PER_ACCOUNT_ADDR`, the tight
//!   one): stops one client guessing one password; a success from that
//!   address resets it. Keyed on the pair, so a stranger's wrong guesses
//!   from elsewhere cannot lock the owner out.
//! - Per account (`LOGIN_LIMIT_PER_ACCOUNT`, a looser ceiling): stops many
//!   addresses together from guessing one password.
//!
//! An attempt takes its cells when it is admitted (so attempts in flight
//! count, and a flood cannot outrun the limit), and gives them back when it
//! turns out not to be a failure: the right password, or an error of ours
//! (busy, database down). A wrong password, an unknown account or a client
//! that hangs up before the verdict keep theirs.
//!
//! The address is checked first, so a client over its limit cannot grow
//! the account tables with made-up emails. Refused attempts cost no
//! database query and no hash. The account key is the normalised email,
//! known or not: a limit that only applied to existing accounts would tell
//! which exist.
//!
//! A refusal is held for a moment (LOGIN_REFUSAL_DELAY) before it is
//! answered, on a timer, not a thread: a flooding client that does not wait
//! for its RetryInfo then gets one answer per call in flight per delay, so
//! its flood costs the service (and the machine it shares) little CPU. At
//! most [`MAX_HELD`] refusals are held at once; more are answered at once, so
//! holding cannot become a memory cost of its own.
//!
//! Whose address: the TCP peer's, unless the peer is a trusted proxy (the
//! gateway logging in for its REST users), whose `x-client-addr` names the
//! client. Over mutual TLS a proxy is trusted by the identity its
//! certificate proves (`TRUSTED_PROXY_IDENTITIES`), never by its address;
//! in plaintext by its address (`TRUSTED_PROXIES`). A trusted proxy naming
//! no client is counted by its own address like anyone else.
//!
//! Memory: a key whose state no longer differs from a fresh one (its cells
//! all back: at most one PERIOD after its last failure) is dropped by
//! [`LoginLimits::retain_recent`], which the server runs periodically.

use crate::domain::Email;
use ipnet::IpNet;
use std::{
    collections::HashMap,
    hash::Hash,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    num::NonZeroU32,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

/// The metadata a trusted proxy names the real client in.
pub const CLIENT_ADDR_HEADER: &str = "x-client-addr";

/// Refusals held at once, at most (each a parked future of a few KiB).
pub const MAX_HELD: usize = 1024;

/// `N/PERIOD`: a burst of N failures, refilled at N per PERIOD (one every
/// PERIOD/N). `off` (or `0`) turns the limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate(Option<(NonZeroU32, Duration)>);

impl Rate {
    pub const OFF: Self = Self(None);
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

/// The peers allowed to name the client they call for (`x-client-addr`)
/// over plaintext: a comma-separated list of CIDRs or addresses; `none`
/// trusts no one.
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

/// Whom a login is counted against: the client's address (IPv6: its /64,
/// what one host usually gets), or none for a call from inside the process
/// (nobody outside can make one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Client(Option<IpAddr>);

/// The caller of one request, as the transport knows it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Peer<'a> {
    /// The TCP peer.
    pub(crate) addr: Option<SocketAddr>,
    /// Over mutual TLS: what its verified certificate proves.
    pub(crate) mesh: Option<&'a svc_kit::tls::MeshConnectInfo>,
    /// The `x-client-addr` it sent, if any.
    pub(crate) named: Option<&'a str>,
}

/// A refusal: come back after `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limited {
    pub(crate) retry_after: Duration,
    pub(crate) scope: &'static str,
}

/// A keyed GCRA whose cells can be given back. Per key it keeps the
/// theoretical arrival time (`tat`): the instant the key's bucket is full
/// again. A take is allowed while `tat` is at most `burst − 1` cells ahead
/// of now, and moves it one cell on.
#[derive(Debug)]
struct Table<K> {
    cell: Duration,
    tolerance: Duration,
    scope: &'static str,
    tats: Mutex<HashMap<K, Instant>>,
}

impl<K: Hash + Eq + Clone> Table<K> {
    fn new(rate: Rate, scope: &'static str) -> Option<Arc<Self>> {
        let (n, per) = rate.0?;
        let cell = per / n.get();
        Some(Arc::new(Self {
            cell,
            tolerance: cell * (n.get() - 1),
            scope,
            tats: Mutex::new(HashMap::new()),
        }))
    }

    fn tats(&self) -> std::sync::MutexGuard<'_, HashMap<K, Instant>> {
        self.tats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take(&self, key: &K, now: Instant) -> Result<(), Limited> {
        let mut tats = self.tats();
        let tat = tats.get(key).copied().unwrap_or(now).max(now);
        let ahead = tat - now;
        if ahead > self.tolerance {
            metrics::counter!("mp3converter_auth_rate_limited_total", "scope" => self.scope)
                .increment(1);
            return Err(Limited {
                retry_after: ahead - self.tolerance,
                scope: self.scope,
            });
        }
        tats.insert(key.clone(), tat + self.cell);
        Ok(())
    }

    /// Undoes one take.
    fn give_back(&self, key: &K, now: Instant) {
        let mut tats = self.tats();
        if let Some(tat) = tats.get_mut(key) {
            *tat = tat.checked_sub(self.cell).unwrap_or(now);
            if *tat <= now {
                tats.remove(key);
            }
        }
    }

    /// Forgets every take of `key`.
    fn reset(&self, key: &K) {
        self.tats().remove(key);
    }

    fn retain_recent(&self, now: Instant) -> usize {
        let mut tats = self.tats();
        tats.retain(|_, tat| *tat > now);
        tats.shrink_to_fit();
        tats.len()
    }
}

type Pair = (String, Option<IpAddr>);

#[derive(Debug, Clone)]
pub(crate) struct LoginLimits {
    by_addr: Option<Arc<Table<IpAddr>>>,
    by_account_addr: Option<Arc<Table<Pair>>>,
    by_account: Option<Arc<Table<String>>>,
    trusted: TrustedProxies,
    trusted_identities: Arc<[String]>,
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

/// The rates of [`LoginLimits`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rates {
    pub(crate) per_addr: Rate,
    pub(crate) per_account_addr: Rate,
    pub(crate) per_account: Rate,
}

/// An admitted attempt: it counts as a failure unless told otherwise.
#[must_use = "an attempt counts as a failure unless it is settled"]
pub(crate) struct Attempt {
    limits: LoginLimits,
    client: Client,
    account: Option<String>,
}

impl Attempt {
    /// The right password: the attempt is not a failure, and the failures
    /// of this account from this address are forgotten.
    pub(crate) fn succeeded(self) {
        let now = Instant::now();
        self.give_back(now);
        if let (Some(t), Some(account)) = (&self.limits.by_account_addr, &self.account) {
            t.reset(&(account.clone(), self.client.0));
        }
    }

    /// Ended by an error of ours, not by a verdict on the password: not a
    /// failure either.
    pub(crate) fn not_counted(self) {
        let now = Instant::now();
        self.give_back(now);
        if let (Some(t), Some(account)) = (&self.limits.by_account_addr, &self.account) {
            t.give_back(&(account.clone(), self.client.0), now);
        }
    }

    fn give_back(&self, now: Instant) {
        let l = &self.limits;
        if let (Some(t), Some(ip)) = (&l.by_addr, self.client.0) {
            t.give_back(&ip, now);
        }
        if let (Some(t), Some(account)) = (&l.by_account, &self.account) {
            t.give_back(account, now);
        }
    }
}

impl LoginLimits {
    pub(crate) fn new(
        rates: Rates,
        trusted: TrustedProxies,
        trusted_identities: &[String],
        refusal_delay: Duration,
    ) -> Self {
        Self {
            by_addr: Table::new(rates.per_addr, "address"),
            by_account_addr: Table::new(rates.per_account_addr, "account_address"),
            by_account: Table::new(rates.per_account, "account"),
            trusted,
            trusted_identities: trusted_identities
                .iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            refusal_delay,
            held: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Admits an attempt by the client's address; a refusal comes after the
    /// refusal delay. Then [`Self::admit_account`] once the account is known.
    pub(crate) async fn admit_client(&self, client: Client) -> Result<Attempt, Limited> {
        match self.check_client(client) {
            Ok(attempt) => Ok(attempt),
            Err(limited) => Err(self.hold(limited).await),
        }
    }

    /// Admits the attempt for `email` too; a refusal (which gives the
    /// address's cell back: the account's limit stopped it, not a wrong
    /// password) comes after the refusal delay.
    pub(crate) async fn admit_account(
        &self,
        attempt: Attempt,
        email: &Email,
    ) -> Result<Attempt, Limited> {
        match self.check_account(attempt, email) {
            Ok(attempt) => Ok(attempt),
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

    /// The client a call counts against: the peer's address, unless the
    /// peer is a trusted proxy, whose `x-client-addr` (an address, with or
    /// without a port) names the client instead.
    pub(crate) fn client(&self, peer: Peer<'_>) -> Client {
        let Some(addr) = peer.addr.map(|p| p.ip().to_canonical()) else {
            // Not a TCP connection (in-process): nobody outside can call so.
            return Client(None);
        };
        let trusted = match peer.mesh {
            Some(mesh) => self.trusted_identities.iter().any(|id| mesh.names(id)),
            None => self.trusted.contains(addr),
        };
        let own = Client(Some(key_of(addr)));
        let Some(named) = peer.named.map(str::trim).filter(|n| !n.is_empty()) else {
            return own;
        };
        if !trusted {
            return own;
        }
        match named
            .parse::<IpAddr>()
            .or_else(|_| named.parse::<SocketAddr>().map(|s| s.ip()))
        {
            Ok(ip) => Client(Some(key_of(ip.to_canonical()))),
            Err(_) => {
                tracing::warn!(%addr, value = named, "trusted proxy sent an unparsable {CLIENT_ADDR_HEADER}");
                own
            }
        }
    }

    fn check_client(&self, client: Client) -> Result<Attempt, Limited> {
        if let (Some(t), Some(ip)) = (&self.by_addr, client.0) {
            t.take(&ip, Instant::now())?;
        }
        Ok(Attempt {
            limits: self.clone(),
            client,
            account: None,
        })
    }

    fn check_account(&self, mut attempt: Attempt, email: &Email) -> Result<Attempt, Limited> {
        let now = Instant::now();
        let account = email.as_str().to_owned();
        let pair = (account.clone(), attempt.client.0);
        if let Some(t) = &self.by_account_addr
            && let Err(limited) = t.take(&pair, now)
        {
            attempt.not_counted();
            return Err(limited);
        }
        if let Some(t) = &self.by_account
            && let Err(limited) = t.take(&account, now)
        {
            if let Some(t) = &self.by_account_addr {
                t.give_back(&pair, now);
            }
            attempt.not_counted();
            return Err(limited);
        }
        attempt.account = Some(account);
        Ok(attempt)
    }

    /// Forgets the keys that are back to a fresh state.
    pub(crate) fn retain_recent(&self) {
        let now = Instant::now();
        let gauge = |scope: &'static str, len: usize| {
            metrics::gauge!("mp3converter_auth_rate_limit_keys", "scope" => scope).set(len as f64);
        };
        gauge(
            "address",
            self.by_addr.as_ref().map_or(0, |t| t.retain_recent(now)),
        );
        gauge(
            "account_address",
            self.by_account_addr
                .as_ref()
                .map_or(0, |t| t.retain_recent(now)),
        );
        gauge(
            "account",
            self.by_account.as_ref().map_or(0, |t| t.retain_recent(now)),
        );
    }

    #[cfg(test)]
    fn keys(&self) -> (usize, usize, usize) {
        (
            self.by_addr.as_ref().map_or(0, |t| t.tats().len()),
            self.by_account_addr.as_ref().map_or(0, |t| t.tats().len()),
            self.by_account.as_ref().map_or(0, |t| t.tats().len()),
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

    fn limits(addr: &str, pair: &str, account: &str, trusted: &str) -> LoginLimits {
        LoginLimits::new(
            Rates {
                per_addr: addr.parse().unwrap(),
                per_account_addr: pair.parse().unwrap(),
                per_account: account.parse().unwrap(),
            },
            trusted.parse().unwrap(),
            &["gateway-svc".to_owned()],
            Duration::ZERO,
        )
    }

    fn client(s: &str) -> Client {
        Client(Some(s.parse().unwrap()))
    }

    fn email(s: &str) -> Email {
        Email::parse(s).unwrap()
    }

    /// One attempt from `c` for `e`, settled as `outcome`.
    fn attempt(l: &LoginLimits, c: Client, e: &str, outcome: Outcome) -> Result<(), Limited> {
        let a = l.check_client(c)?;
        let a = l.check_account(a, &email(e))?;
        match outcome {
            Outcome::Failed => drop(a),
            Outcome::Succeeded => a.succeeded(),
            Outcome::OurError => a.not_counted(),
        }
        Ok(())
    }

    #[derive(Clone, Copy)]
    enum Outcome {
        Failed,
        Succeeded,
        OurError,
    }
    use Outcome::*;

    #[test]
    fn rates_parse() {
        assert_eq!("off".parse::<Rate>().unwrap(), Rate::OFF);
        assert_eq!("0".parse::<Rate>().unwrap(), Rate::OFF);
        assert_eq!("0/1m".parse::<Rate>().unwrap(), Rate::OFF);
        let t = Table::<u8>::new("10/1m".parse().unwrap(), "x").unwrap();
        assert_eq!(t.cell, Duration::from_secs(6));
        assert_eq!(t.tolerance, Duration::from_secs(54));
        for bad in ["10", "x/1m", "10/", "10/1y", "5/0s", "-1/1m"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn a_table_allows_its_burst_then_one_per_cell_and_takes_back() {
        let t = Table::<u8>::new("3/3s".parse().unwrap(), "x").unwrap();
        let now = Instant::now();
        for _ in 0..3 {
            t.take(&1, now).unwrap();
        }
        let refused = t.take(&1, now).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        // A second later one cell is back.
        t.take(&1, now + Duration::from_secs(1)).unwrap();
        assert!(t.take(&1, now + Duration::from_secs(1)).is_err());
        // Given back: one more now.
        t.give_back(&1, now + Duration::from_secs(1));
        t.take(&1, now + Duration::from_secs(1)).unwrap();
        t.reset(&1);
        for _ in 0..3 {
            t.take(&1, now).unwrap();
        }
        assert!(t.take(&2, now).is_ok(), "keys are apart");
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
        let l = limits("off", "off", "off", "127.0.0.1/32");
        let peer = |addr: &str, named: Option<&'static str>| Peer {
            addr: Some(addr.parse().unwrap()),
            mesh: None,
            named,
        };
        // An untrusted peer cannot choose its key.
        assert_eq!(
            l.client(peer("192.0.2.1:4000", Some("198.51.100.7"))),
            client("192.0.2.1")
        );
        // A trusted one names the client, with or without a port.
        assert_eq!(
            l.client(peer("127.0.0.1:4000", Some("198.51.100.7"))),
            client("198.51.100.7")
        );
        assert_eq!(
            l.client(peer("127.0.0.1:4000", Some("198.51.100.7:5555"))),
            client("198.51.100.7")
        );
        assert_eq!(
            l.client(peer("127.0.0.1:4000", Some("[2001:db8::1]:5555"))),
            client("2001:db8::")
        );
        // Naming nobody (or garbage), it is counted by its own address.
        assert_eq!(l.client(peer("127.0.0.1:4000", None)), client("127.0.0.1"));
        assert_eq!(
            l.client(peer("127.0.0.1:4000", Some("not an address"))),
            client("127.0.0.1")
        );
        // IPv6 by /64; IPv4-mapped IPv6 as IPv4 (and so trusted here).
        assert_eq!(
            l.client(peer("[2001:db8:1:2:aaaa::1]:1", None)),
            client("2001:db8:1:2::")
        );
        assert_eq!(
            l.client(peer("[::ffff:127.0.0.1]:1", Some("192.0.2.9"))),
            client("192.0.2.9")
        );
        // In process: no address.
        assert_eq!(l.client(Peer::default()), Client(None));
    }

    #[test]
    fn over_mutual_tls_only_the_proxys_identity_is_trusted() {
        // The stack's certificates (`scripts/stack certs`), one per service.
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let dir = std::env::var("STACK_TLS_DIR")
            .expect("STACK_TLS_DIR: run `eval \"$(scripts/stack env)\"` after `scripts/stack up`");
        let l = limits("off", "off", "off", "127.0.0.1/32");
        for (identity, trusted) in [("gateway-svc", true), ("converter-svc", false)] {
            let cert = CertificateDer::from_pem_file(format!("{dir}/{identity}.pem")).unwrap();
            let mesh = svc_kit::tls::MeshConnectInfo::new(
                Some("127.0.0.1:4000".parse().unwrap()),
                None,
                Some(cert),
            );
            let got = l.client(Peer {
                addr: Some("127.0.0.1:4000".parse().unwrap()),
                mesh: Some(&mesh),
                named: Some("198.51.100.7"),
            });
            // A peer in TRUSTED_PROXIES is not trusted over TLS for its
            // address: only the gateway's certificate names a client.
            let want = if trusted { "198.51.100.7" } else { "127.0.0.1" };
            assert_eq!(got, client(want), "{identity}");
        }
        // No certificate, no trust.
        let mesh = svc_kit::tls::MeshConnectInfo::new(None, None, None);
        let got = l.client(Peer {
            addr: Some("127.0.0.1:4000".parse().unwrap()),
            mesh: Some(&mesh),
            named: Some("198.51.100.7"),
        });
        assert_eq!(got, client("127.0.0.1"));
    }

    #[test]
    fn only_failures_count_and_a_success_resets_the_pair() {
        let l = limits("10/1m", "3/1m", "100/1h", "none");
        let (a, b) = (client("192.0.2.1"), client("192.0.2.2"));
        // The owner logging in again and again is never limited.
        for _ in 0..50 {
            attempt(&l, a, "owner@example.com", Succeeded).unwrap();
        }
        // Two failures, a success, and three failures more are fine: the
        // success forgot the first two.
        attempt(&l, a, "owner@example.com", Failed).unwrap();
        attempt(&l, a, "owner@example.com", Failed).unwrap();
        attempt(&l, a, "owner@example.com", Succeeded).unwrap();
        for _ in 0..3 {
            attempt(&l, a, "owner@example.com", Failed).unwrap();
        }
        let refused = attempt(&l, a, "owner@example.com", Failed).unwrap_err();
        assert_eq!(refused.scope, "account_address");
        assert!(refused.retry_after > Duration::from_secs(15), "{refused:?}");
        // Locked out from that address only: the owner elsewhere is not.
        attempt(&l, b, "owner@example.com", Succeeded).unwrap();
        // Errors of ours are not failures.
        for _ in 0..10 {
            attempt(&l, b, "other@example.com", OurError).unwrap();
        }
    }

    #[test]
    fn the_address_limit_counts_failures_over_every_account() {
        let l = limits("3/1m", "off", "off", "none");
        let a = client("192.0.2.1");
        for i in 0..3 {
            attempt(&l, a, &format!("u{i}@example.com"), Failed).unwrap();
        }
        let refused = attempt(&l, a, "u9@example.com", Succeeded).unwrap_err();
        assert_eq!(refused.scope, "address");
        // One failure comes back every 20 s.
        assert!(
            (Duration::from_secs(19)..=Duration::from_secs(20)).contains(&refused.retry_after),
            "{refused:?}"
        );
        assert!(attempt(&l, client("192.0.2.2"), "u9@example.com", Failed).is_ok());
        // In process: no address limit.
        for _ in 0..10 {
            attempt(&l, Client(None), "u9@example.com", Failed).unwrap();
        }
    }

    #[test]
    fn the_account_ceiling_counts_every_address_together() {
        let l = limits("off", "5/1m", "3/1h", "none");
        for i in 0..3u8 {
            attempt(
                &l,
                Client(Some(IpAddr::from([192, 0, 2, i]))),
                "Victim@Example.com",
                Failed,
            )
            .unwrap();
        }
        let refused =
            attempt(&l, client("198.51.100.1"), " victim@example.COM", Failed).unwrap_err();
        assert_eq!(refused.scope, "account");
        assert!(
            refused.retry_after > Duration::from_secs(1100),
            "{refused:?}"
        );
        // The refusal took nothing of its own pair: after the ceiling
        // refills it has its full burst.
        assert_eq!(l.keys(), (0, 3, 1));
        assert!(attempt(&l, client("198.51.100.1"), "bob@example.com", Failed).is_ok());
    }

    #[test]
    fn idle_keys_are_forgotten() {
        // One failure per 10 ms: a key is fresh again 10 ms after its last.
        let l = limits("1/10ms", "1/10ms", "1/10ms", "none");
        for i in 0..100u8 {
            let _ = attempt(
                &l,
                Client(Some(IpAddr::from([192, 0, 2, i]))),
                &format!("u{i}@example.com"),
                Failed,
            );
        }
        assert_eq!(l.keys(), (100, 100, 100));
        std::thread::sleep(Duration::from_millis(50));
        l.retain_recent();
        assert_eq!(l.keys(), (0, 0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_are_held_for_the_delay_but_not_past_the_retry_delay() {
        let l = LoginLimits::new(
            Rates {
                per_addr: "1/1m".parse().unwrap(),
                per_account_addr: "1/3s".parse().unwrap(),
                per_account: Rate::OFF,
            },
            "none".parse().unwrap(),
            &[],
            Duration::from_secs(5),
        );
        let a = client("192.0.2.1");
        let started = tokio::time::Instant::now();
        drop(l.admit_client(a).await.unwrap());
        assert_eq!(started.elapsed(), Duration::ZERO, "admitted at once");
        let refused = l.admit_client(a).await.err().unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        // What is left of the minute after the hold.
        assert!(
            (Duration::from_secs(54)..=Duration::from_secs(55)).contains(&refused.retry_after),
            "{refused:?}"
        );
        // A retry delay shorter than the hold bounds it.
        let e = email("a@example.com");
        let b = client("192.0.2.2");
        let attempt = l.admit_client(b).await.unwrap();
        drop(l.admit_account(attempt, &e).await.unwrap());
        let started = tokio::time::Instant::now();
        let attempt = l.admit_client(Client(None)).await.unwrap();
        let refused = l.admit_account(attempt, &e).await.err();
        assert!(refused.is_none(), "another pair");
        let attempt = l.check_client(b);
        assert!(attempt.is_err(), "b's one failure a minute is spent");
        let _ = started;
        assert_eq!(l.held.load(Ordering::Acquire), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_max_held_refusals_are_held() {
        let l = LoginLimits::new(
            Rates {
                per_addr: "1/1h".parse().unwrap(),
                per_account_addr: Rate::OFF,
                per_account: Rate::OFF,
            },
            "none".parse().unwrap(),
            &[],
            Duration::from_secs(1),
        );
        let a = client("192.0.2.1");
        drop(l.admit_client(a).await.unwrap());
        let held: Vec<_> = (0..MAX_HELD)
            .map(|_| {
                let l = l.clone();
                tokio::spawn(async move { l.admit_client(a).await.map(drop) })
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
        let l = limits("off", "off", "off", "none");
        for _ in 0..1000 {
            attempt(&l, client("192.0.2.1"), "a@example.com", Failed).unwrap();
        }
    }
}
