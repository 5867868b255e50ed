//! Trusted peers: CIDR blocks (`10.0.0.0/16`, `2600:1f18::/40`; a bare address is a /32 or a
//! /128) and the match of a client's address against them. An IPv4-mapped IPv6 address
//! (`::ffff:10.0.0.7`, an IPv4 client on a `[::]` socket) is matched as the IPv4 address.
//!
//! The deploy hooks include this same file (`#[path]`) to validate deploy.yml's
//! `front.trusted_proxies`, so both accept exactly the same text.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// One CIDR block, normalized: its host bits are zero and a mapped IPv6 block is IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

/// Why a CIDR block did not parse: says what is wrong with it, not where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrError(pub String);

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CidrError {}

impl Cidr {
    /// The network address.
    pub fn network(&self) -> IpAddr {
        self.net
    }

    /// The prefix length (0 to 32, or 0 to 128).
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in the block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(a) & mask == u32::from(n)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(a) & mask == u128::from(n)
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, CidrError> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| CidrError(format!("'{addr}' is not an IPv4 or IPv6 address")))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => {
                    return Err(CidrError(format!(
                        "'/{p}' is not a prefix length from 0 to {max}"
                    )));
                }
            },
        };
        // An IPv4-mapped block (::ffff:0:0/96 and longer) is the IPv4 block it maps.
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) if prefix >= 96 && v6.to_ipv4_mapped().is_some() => {
                (IpAddr::V4(v6.to_ipv4_mapped().expect("mapped")), prefix - 96)
            }
            a => (a, prefix),
        };
        let net = match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        };
        if net != addr {
            return Err(CidrError(format!(
                "'{s}' has bits set after its /{prefix} prefix; the block is {net}/{prefix}"
            )));
        }
        Ok(Cidr { net, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// Whether `ip` is in any of `blocks` (a short list: a linear scan, no allocation).
pub fn any_contains(blocks: &[Cidr], ip: IpAddr) -> bool {
    blocks.iter().any(|c| c.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_blocks_and_bare_addresses() {
        assert_eq!(c("10.0.0.0/16").to_string(), "10.0.0.0/16");
        assert_eq!(c(" 10.0.0.7 ").to_string(), "10.0.0.7/32");
        assert_eq!(c("2600:1f18::/40").to_string(), "2600:1f18::/40");
        assert_eq!(c("::1").to_string(), "::1/128");
        assert_eq!(c("0.0.0.0/0").prefix(), 0);
        assert_eq!(c("::/0").prefix(), 0);
        // A mapped block is the IPv4 block.
        assert_eq!(c("::ffff:10.1.0.0/112").to_string(), "10.1.0.0/16");
    }

    #[test]
    fn rejects_bad_blocks() {
        let err = |s: &str| s.parse::<Cidr>().unwrap_err().0;
        assert!(err("10.0.0.0/33").contains("0 to 32"));
        assert!(err("::/129").contains("0 to 128"));
        assert!(err("10.0.0.0/").contains("prefix length"));
        assert!(err("10.0.0.0/+8").contains("prefix length"));
        assert!(err("10.0.0/8").contains("not an IPv4 or IPv6 address"));
        assert!(err("").contains("not an IPv4 or IPv6 address"));
        assert!(err("alb.example.com").contains("not an IPv4 or IPv6 address"));
        assert_eq!(
            err("10.0.0.5/16"),
            "'10.0.0.5/16' has bits set after its /16 prefix; the block is 10.0.0.0/16"
        );
    }

    #[test]
    fn matches_v4_v6_and_mapped() {
        let b = c("10.0.0.0/16");
        assert!(b.contains(ip("10.0.0.1")));
        assert!(b.contains(ip("10.0.255.255")));
        assert!(!b.contains(ip("10.1.0.0")));
        assert!(!b.contains(ip("9.255.255.255")));
        // An IPv4 client on a [::] socket.
        assert!(b.contains(ip("::ffff:10.0.3.4")));
        assert!(!b.contains(ip("::ffff:10.1.3.4")));
        // No IPv6 address is in an IPv4 block, nor the other way round.
        assert!(!b.contains(ip("::a00:1")));
        assert!(!c("::/0").contains(ip("10.0.0.1")));
        assert!(c("::/0").contains(ip("2001:db8::1")));
        assert!(c("0.0.0.0/0").contains(ip("203.0.113.7")));
        let one = c("127.0.0.1");
        assert!(one.contains(ip("127.0.0.1")));
        assert!(!one.contains(ip("127.0.0.2")));
        let v6 = c("2600:1f18:abc::/48");
        assert!(v6.contains(ip("2600:1f18:abc:1::5")));
        assert!(!v6.contains(ip("2600:1f18:abd::5")));
        assert!(c("::1").contains(ip("::1")));
        let list = [c("10.0.0.0/24"), c("10.0.2.0/24")];
        assert!(any_contains(&list, ip("10.0.2.9")));
        assert!(!any_contains(&list, ip("10.0.1.9")));
        assert!(!any_contains(&[], ip("10.0.1.9")));
    }
}
