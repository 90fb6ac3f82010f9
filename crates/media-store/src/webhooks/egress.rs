//! Where webhooks may be delivered: the operator's egress policy, and the
//! address rules behind it.

use super::MAX_URL_BYTES;
use ipnet::IpNet;
use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

/// Where webhooks may be delivered: the operator's choice, read by the
/// gateway (at registration) and notify-svc (at every attempt) alike.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EgressArgs {
    /// Networks webhook endpoints may be in although they are not public
    /// (loopback, private, link-local…), comma-separated CIDRs, e.g. an
    /// in-cluster receiver's. Unset: public addresses only.
    #[arg(
        long = "webhook-allowed-networks",
        env = "WEBHOOK_ALLOWED_NETWORKS",
        value_delimiter = ','
    )]
    pub allowed_networks: Vec<IpNet>,

    /// Accept http:// endpoints too (development only: the messages are
    /// signed, not encrypted).
    #[arg(long = "webhook-allow-http", env = "WEBHOOK_ALLOW_HTTP")]
    pub allow_http: bool,
}

/// How long a name may take to resolve.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

impl EgressArgs {
    /// `raw` as an endpoint URL, or why not. Names are not resolved here
    /// ([`Self::resolve`] does).
    pub fn check_url(&self, raw: &str) -> Result<url::Url, String> {
        if raw.len() > MAX_URL_BYTES {
            return Err(format!("the URL is over {MAX_URL_BYTES} bytes"));
        }
        let url = url::Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => return Err("the URL must be https://".into()),
            other => return Err(format!("the URL must be https://, not {other}://")),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("the URL must not carry a user name or password".into());
        }
        if url.fragment().is_some() {
            return Err("the URL must not have a #fragment".into());
        }
        let ip = match url.host() {
            None => return Err("the URL has no host".into()),
            Some(url::Host::Ipv4(a)) => Some(IpAddr::V4(a)),
            Some(url::Host::Ipv6(a)) => Some(IpAddr::V6(a)),
            Some(url::Host::Domain(_)) => None,
        };
        if let Some(ip) = ip
            && !self.address_allowed(ip)
        {
            return Err(format!("{ip} is not a public address"));
        }
        Ok(url)
    }

    /// The addresses of `url`'s host that deliveries may go to; an error if
    /// it has none (it does not resolve, or only to addresses not allowed).
    pub async fn resolve(&self, url: &url::Url) -> Result<Vec<std::net::SocketAddr>, String> {
        let host = url.host_str().ok_or("the URL has no host")?;
        let port = url.port_or_known_default().unwrap_or(443);
        self.resolve_host(host.trim_start_matches('[').trim_end_matches(']'), port)
            .await
    }

    /// The addresses of `host` that deliveries may go to (see
    /// [`Self::resolve`]).
    pub async fn resolve_host(
        &self,
        host: &str,
        port: u16,
    ) -> Result<Vec<std::net::SocketAddr>, String> {
        let found = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| format!("{host} did not resolve in time"))?
            .map_err(|e| format!("{host} does not resolve: {e}"))?;
        let (allowed, refused): (Vec<_>, Vec<_>) =
            found.partition(|a| self.address_allowed(a.ip()));
        match (allowed.is_empty(), refused.first()) {
            (false, _) => Ok(allowed),
            (true, Some(a)) => Err(format!(
                "{host} resolves to {}, not a public address",
                a.ip()
            )),
            (true, None) => Err(format!("{host} does not resolve")),
        }
    }

    /// Public, or in a network the operator allowed.
    pub fn address_allowed(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        is_public(ip) || self.allowed_networks.iter().any(|n| n.contains(&ip))
    }
}

/// An IPv4 address written as IPv6 (mapped, or NAT64) is judged as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            // 64:ff9b::/96 (NAT64) carries an IPv4 address in its low bits.
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let o = v6.octets();
                return IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            }
            IpAddr::V6(v6)
        }
        v4 => v4,
    }
}

/// Reachable on the public internet: not loopback, private, link-local
/// (cloud metadata lives there), shared, documentation, benchmarking,
/// multicast, reserved or unspecified.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let [o0, o1, o2, _] = a.octets();
            !(a.is_unspecified()
                || a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_broadcast()
                || a.is_documentation()
                || a.is_multicast()
                || o0 == 0
                || o0 >= 240 // reserved
                || (o0 == 100 && (64..128).contains(&o1)) // shared (CGNAT)
                || (o0 == 192 && o1 == 0 && o2 == 0) // IETF protocol assignments
                || (o0 == 198 && (o1 == 18 || o1 == 19))) // benchmarking
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            !(a.is_unspecified()
                || a.is_loopback()
                || a.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || s[0] == 0x2002 // 6to4: an IPv4 address inside
                || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) // discard
                || a.to_ipv4().is_some()) // ::a.b.c.d (IPv4-compatible)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allowed: &[&str], http: bool) -> EgressArgs {
        EgressArgs {
            allowed_networks: allowed.iter().map(|n| n.parse().unwrap()).collect(),
            allow_http: http,
        }
    }

    #[test]
    fn only_public_addresses_unless_allowed() {
        let p = policy(&[], false);
        for ip in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "192.0.0.170",
            "198.18.0.1",
            "192.0.2.1",
            "::",
            "::1",
            "fe80::1",
            "fc00::1",
            "fd00:ec2::254",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "::127.0.0.1",
            "2001:db8::1",
            "2002:7f00:1::",
        ] {
            assert!(!p.address_allowed(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700:4700::1111",
            "::ffff:1.1.1.1",
            "64:ff9b::808:808",
        ] {
            assert!(p.address_allowed(ip.parse().unwrap()), "{ip}");
        }
        let p = policy(&["127.0.0.1/32", "10.0.0.0/8"], false);
        assert!(p.address_allowed("127.0.0.1".parse().unwrap()));
        assert!(p.address_allowed("::ffff:127.0.0.1".parse().unwrap()));
        assert!(p.address_allowed("10.9.9.9".parse().unwrap()));
        assert!(!p.address_allowed("127.0.0.2".parse().unwrap()));
        assert!(!p.address_allowed("169.254.169.254".parse().unwrap()));
    }

    #[test]
    fn urls_are_https_to_a_public_host_without_credentials() {
        let p = policy(&[], false);
        assert!(p.check_url("https://hooks.example.com/mp3?x=1").is_ok());
        assert!(p.check_url("https://1.1.1.1:8443/").is_ok());
        for (raw, why) in [
            ("http://hooks.example.com/", "https"),
            ("ftp://hooks.example.com/", "https"),
            ("file:///etc/passwd", "https"),
            ("https://user:pw@hooks.example.com/", "user name"),
            ("https://hooks.example.com/#x", "fragment"),
            ("https://127.0.0.1/", "not a public address"),
            ("https://[::1]/", "not a public address"),
            (
                "https://169.254.169.254/latest/meta-data/",
                "not a public address",
            ),
            ("https://2130706433/", "not a public address"), // 127.0.0.1 as a number
            ("https://0x7f.1/", "not a public address"),
            ("not a url", "not a URL"),
        ] {
            let err = p.check_url(raw).expect_err(raw);
            assert!(err.contains(why), "{raw}: {err}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES));
        assert!(p.check_url(&long).unwrap_err().contains("over"));
        let dev = policy(&["127.0.0.1/32"], true);
        assert!(dev.check_url("http://127.0.0.1:8080/hook").is_ok());
        assert!(dev.check_url("http://127.0.0.2:8080/hook").is_err());
    }

    #[tokio::test]
    async fn names_resolving_to_private_addresses_are_refused() {
        let p = policy(&[], true);
        let url = p.check_url("http://localhost:9/").unwrap();
        let err = p.resolve(&url).await.unwrap_err();
        assert!(err.contains("not a public address"), "{err}");
        let p = policy(&["127.0.0.0/8", "::1/128"], true);
        let addrs = p.resolve(&url).await.unwrap();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }
}
