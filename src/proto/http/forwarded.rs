//! The client's address behind trusted proxies: `Forwarded` (RFC 7239) or `X-Forwarded-For`,
//! read only when the peer is a trusted proxy, from the right (the nearest hop) to the left,
//! skipping the addresses of trusted proxies: the first untrusted one is the client. A hop
//! that is not an address (`unknown`, an obfuscated name) stops the walk there: the address
//! reached so far is the answer. This is what nginx's `real_ip_recursive` and Express's
//! `trust proxy` do.
//!
//! Must never: believe a header sent by a peer that is not a trusted proxy.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

/// Where the client is: the peer itself, or the address the trusted proxies say.
pub fn client_addr(peer: SocketAddr, headers: &[(String, String)], trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    let mut client = peer.ip();
    if !is_trusted(&client) {
        return client;
    }
    let forwarded: Vec<&str> = headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("forwarded")).map(|(_, v)| v.as_str()).collect();
    let hops: Vec<Option<IpAddr>> = if !forwarded.is_empty() {
        forwarded.iter().flat_map(|v| v.split(',')).map(forwarded_for).collect()
    } else {
        headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("x-forwarded-for")).flat_map(|(_, v)| v.split(',')).map(|h| parse_node(h.trim())).collect()
    };
    for hop in hops.into_iter().rev() {
        match hop {
            Some(ip) => {
                client = ip;
                if !is_trusted(&ip) {
                    break;
                }
            }
            None => break,
        }
    }
    client
}

/// The `for=` of one `Forwarded` element (`for=192.0.2.60;proto=http;by=203.0.113.43`).
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        k.trim().eq_ignore_ascii_case("for").then(|| parse_node(v.trim().trim_matches('"'))).flatten()
    })
}

/// A node: `192.0.2.43`, `192.0.2.43:47011`, `[2001:db8::1]`, `[2001:db8::1]:4711`,
/// `2001:db8::1`.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[').and_then(|r| r.split(']').next()).and_then(|ip| ip.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    #[test]
    fn headers_count_only_from_a_trusted_peer() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let xff = h(&[("X-Forwarded-For", "203.0.113.9, 10.1.1.1")]);
        assert_eq!(client_addr("10.0.0.2:5000".parse().unwrap(), &xff, &trusted), "203.0.113.9".parse::<IpAddr>().unwrap());
        // An untrusted peer's header is a lie it tells: ignored.
        assert_eq!(client_addr("198.51.100.7:5000".parse().unwrap(), &xff, &trusted), "198.51.100.7".parse::<IpAddr>().unwrap());
        // A client that prepends a forged hop gets its own address, not the forged one.
        let forged = h(&[("x-forwarded-for", "1.2.3.4, 203.0.113.9")]);
        assert_eq!(client_addr("10.0.0.2:5000".parse().unwrap(), &forged, &trusted), "203.0.113.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn forwarded_wins_over_x_forwarded_for_and_takes_every_node_form() {
        let trusted: Vec<IpNet> = vec!["127.0.0.1/32".parse().unwrap(), "10.0.0.0/8".parse().unwrap()];
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let f = h(&[("Forwarded", r#"for="[2001:db8:cafe::17]:4711";proto=https, for=10.2.3.4"#), ("X-Forwarded-For", "9.9.9.9")]);
        assert_eq!(client_addr(peer, &f, &trusted), "2001:db8:cafe::17".parse::<IpAddr>().unwrap());
        let unknown = h(&[("Forwarded", "for=unknown, for=192.0.2.60:80")]);
        assert_eq!(client_addr(peer, &unknown, &trusted), "192.0.2.60".parse::<IpAddr>().unwrap());
        let all_trusted = h(&[("Forwarded", "for=unknown, for=10.9.9.9")]);
        assert_eq!(client_addr(peer, &all_trusted, &trusted), "10.9.9.9".parse::<IpAddr>().unwrap(), "stops at a hop it cannot read");
        assert_eq!(client_addr(peer, &[], &trusted), "127.0.0.1".parse::<IpAddr>().unwrap());
    }
}
