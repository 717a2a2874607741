//! Which destinations a webhook may be sent to (no SSRF). A URL must be
//! `https` (or `http` when `webhooks.allow_http`), and every address its
//! host resolves to must be public: loopback, private, link-local (cloud
//! metadata lives there), CGNAT, multicast, unspecified, reserved and
//! documentation ranges are refused, for IPv4 and IPv6, looking inside
//! IPv4-mapped, IPv4-compatible, NAT64 and 6to4 addresses. Hosts listed in
//! `webhooks.allowed_hosts` skip the address check (tests, a trusted
//! internal receiver).
//!
//! The check runs at registration and again at delivery, where the
//! worker's resolver hands the HTTP client only the addresses checked
//! here, so the connection goes where the check looked.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use url::{Host, Url};

use crate::config::WebhookSettings;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    #[error("webhook url is not a valid absolute URL: {0}")]
    Invalid(String),
    #[error("webhook url must use https")]
    Scheme,
    #[error("webhook url must not carry credentials")]
    Credentials,
    #[error("webhook destination {host} is refused: it resolves to {addr}, a non-public address")]
    Refused { host: String, addr: IpAddr },
    #[error("webhook destination {0} does not resolve")]
    Unresolvable(String),
}

/// The rules of `webhooks.*` for destinations.
#[derive(Clone, Debug, Default)]
pub struct DestinationPolicy {
    pub allow_http: bool,
    pub allowed_hosts: Vec<String>,
}

impl From<&WebhookSettings> for DestinationPolicy {
    fn from(s: &WebhookSettings) -> Self {
        Self {
            allow_http: s.allow_http,
            allowed_hosts: s.allowed_hosts.clone(),
        }
    }
}

impl DestinationPolicy {
    /// Parses `raw` and checks what can be checked without DNS: scheme,
    /// credentials, and the address when the host is one.
    pub fn check_url(&self, raw: &str) -> Result<Url, DestinationError> {
        let url = Url::parse(raw).map_err(|e| DestinationError::Invalid(e.to_string()))?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            _ => return Err(DestinationError::Scheme),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(DestinationError::Credentials);
        }
        let host = url
            .host_str()
            .ok_or_else(|| DestinationError::Invalid("no host".into()))?
            .to_string();
        if !self.is_exempt(&host) {
            let literal = match url.host() {
                Some(Host::Ipv4(a)) => Some(IpAddr::V4(a)),
                Some(Host::Ipv6(a)) => Some(IpAddr::V6(a)),
                _ => None,
            };
            if let Some(addr) = literal.filter(|a| is_forbidden(*a)) {
                return Err(DestinationError::Refused { host, addr });
            }
        }
        Ok(url)
    }

    /// Whether `host` (as written in a URL) is exempt from the address check.
    pub fn is_exempt(&self, host: &str) -> bool {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        self.allowed_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host) || h.eq_ignore_ascii_case(bare))
    }

    /// Resolves `host` and answers its addresses if every one is allowed;
    /// one forbidden address refuses the host (a name that answers both a
    /// public and a private address is not trusted with either).
    pub async fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>, DestinationError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|_| DestinationError::Unresolvable(host.to_string()))?
            .collect();
        self.admit(host, addrs)
    }

    /// The addresses of `host`, refused if any is forbidden (see `resolve`).
    pub fn admit(
        &self,
        host: &str,
        addrs: Vec<SocketAddr>,
    ) -> Result<Vec<SocketAddr>, DestinationError> {
        if addrs.is_empty() {
            return Err(DestinationError::Unresolvable(host.to_string()));
        }
        if !self.is_exempt(host) {
            if let Some(bad) = addrs.iter().find(|a| is_forbidden(a.ip())) {
                return Err(DestinationError::Refused {
                    host: host.to_string(),
                    addr: bad.ip(),
                });
            }
        }
        Ok(addrs)
    }

    /// The whole registration check: the URL, then its host's addresses.
    pub async fn check(&self, raw: &str) -> Result<Url, DestinationError> {
        let url = self.check_url(raw)?;
        if let Some(Host::Domain(domain)) = url.host() {
            let port = url.port_or_known_default().unwrap_or(443);
            self.resolve(domain, port).await?;
        }
        Ok(url)
    }
}

/// Whether a webhook may never be sent to `addr`.
pub fn is_forbidden(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => forbidden_v4(a),
        IpAddr::V6(a) => forbidden_v6(a),
    }
}

fn forbidden_v4(a: Ipv4Addr) -> bool {
    let [o0, o1, o2, _] = a.octets();
    a.is_unspecified()
        || o0 == 0 // "this network"
        || a.is_loopback()
        || a.is_private()
        || a.is_link_local() // 169.254/16, with the cloud metadata address
        || (o0 == 100 && (o1 & 0xc0) == 64) // CGNAT 100.64/10
        || a.is_multicast()
        || a.is_broadcast()
        || o0 >= 240 // reserved
        || (o0 == 192 && o1 == 0 && o2 == 0) // IETF protocol assignments
        || a.is_documentation()
        || (o0 == 198 && (o1 & 0xfe) == 18) // benchmarking 198.18/15
}

fn forbidden_v6(a: Ipv6Addr) -> bool {
    let seg = a.segments();
    if let Some(v4) = a.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    // IPv4-compatible (deprecated) ::a.b.c.d and NAT64 64:ff9b::a.b.c.d.
    if (seg[..6] == [0, 0, 0, 0, 0, 0] && !a.is_loopback() && !a.is_unspecified())
        || seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
    {
        let [x, y] = [seg[6], seg[7]];
        return forbidden_v4(Ipv4Addr::new(
            (x >> 8) as u8,
            x as u8,
            (y >> 8) as u8,
            y as u8,
        ));
    }
    // 6to4 2002:a.b.c.d::/48.
    if seg[0] == 0x2002 {
        let [x, y] = [seg[1], seg[2]];
        return forbidden_v4(Ipv4Addr::new(
            (x >> 8) as u8,
            x as u8,
            (y >> 8) as u8,
            y as u8,
        ));
    }
    a.is_unspecified()
        || a.is_loopback()
        || (seg[0] & 0xfe00) == 0xfc00 // unique local fc00::/7 (AWS metadata fd00:ec2::254)
        || (seg[0] & 0xffc0) == 0xfe80 // link-local
        || (seg[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || a.is_multicast()
        || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
        || (seg[0] == 0x0100 && seg[1..4] == [0, 0, 0]) // discard-only 100::/64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn non_public_addresses_are_forbidden_in_every_spelling() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "224.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "::7f00:1",
        ] {
            assert!(is_forbidden(ip(bad)), "{bad} must be forbidden");
        }
        for good in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_forbidden(ip(good)), "{good} must be allowed");
        }
    }

    #[test]
    fn urls_need_https_and_a_public_host_unless_allowed() {
        let strict = DestinationPolicy::default();
        assert_eq!(
            strict.check_url("http://example.com/h").unwrap_err(),
            DestinationError::Scheme
        );
        assert!(matches!(
            strict.check_url("https://127.0.0.1/h"),
            Err(DestinationError::Refused { .. })
        ));
        assert!(matches!(
            strict.check_url("https://[::ffff:127.0.0.1]/h"),
            Err(DestinationError::Refused { .. })
        ));
        assert_eq!(
            strict.check_url("https://u:p@example.com/").unwrap_err(),
            DestinationError::Credentials
        );
        assert!(strict.check_url("https://example.com/h").is_ok());
        let tests = DestinationPolicy {
            allow_http: true,
            allowed_hosts: vec!["127.0.0.1".into()],
        };
        assert!(tests.check_url("http://127.0.0.1:9/h").is_ok());
        assert!(tests.check_url("http://127.0.0.2:9/h").is_err());
        let addrs = vec!["127.0.0.1:9".parse().unwrap()];
        assert!(tests.admit("127.0.0.1", addrs.clone()).is_ok());
        assert!(tests.admit("localhost", addrs).is_err());
    }
}
