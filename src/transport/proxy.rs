//! The PROXY protocol (HAProxy's, versions 1 and 2) that load balancers
//! put before a connection's first byte, saying whom they accepted it
//! from. Read only on listeners that opt in, only from trusted proxies,
//! and exactly: the header's bytes and not one more, since TLS follows.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Version 2's signature.
const V2: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Version 1's longest header, as the specification bounds it.
const V1_MAX: usize = 107;

/// Version 2's longest address and TLV block the gateway reads.
const V2_MAX: usize = 2048;

/// The shortest header of either version (`PROXY UNKNOWN\r\n`).
const MIN: usize = 15;

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The connection does not begin with a PROXY header.
    #[error("no PROXY protocol header")]
    Missing,
    /// The header does not parse.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
}

/// What a version 1 header line says: the client's address, or none for
/// `UNKNOWN` (the connection's own address stands).
pub fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    let line = std::str::from_utf8(line)
        .ok()
        .and_then(|l| l.strip_suffix("\r\n"))
        .ok_or(ProxyError::Malformed("not a line"))?;
    let mut parts = line.split(' ');
    if parts.next() != Some("PROXY") {
        return Err(ProxyError::Missing);
    }
    let family = parts.next();
    if family == Some("UNKNOWN") {
        return Ok(None);
    }
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(ProxyError::Malformed("a v1 header has five fields"));
    };
    let ip = |a: &str| a.parse::<IpAddr>().ok();
    let port = |p: &str| p.parse::<u16>().ok();
    let (Some(src), Some(_), Some(sport), Some(_)) = (ip(src), ip(dst), port(sport), port(dport))
    else {
        return Err(ProxyError::Malformed("bad address or port"));
    };
    match (family, src) {
        (Some("TCP4"), IpAddr::V4(_)) | (Some("TCP6"), IpAddr::V6(_)) => {
            Ok(Some(SocketAddr::new(src, sport)))
        }
        _ => Err(ProxyError::Malformed("unknown family")),
    }
}

/// What a version 2 header says, given its 16 fixed bytes and the block
/// after them: the client's address, or none (LOCAL, or a family other
/// than TCP over IPv4 or IPv6).
pub fn parse_v2(fixed: &[u8; 16], block: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    if &fixed[..12] != V2 {
        return Err(ProxyError::Missing);
    }
    let (version, command) = (fixed[12] >> 4, fixed[12] & 0x0f);
    if version != 2 {
        return Err(ProxyError::Malformed("version is not 2"));
    }
    match command {
        0 => return Ok(None),
        1 => {}
        _ => return Err(ProxyError::Malformed("unknown command")),
    }
    match fixed[13] {
        0x11 => {
            let a = block
                .get(..12)
                .ok_or(ProxyError::Malformed("short IPv4 addresses"))?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Ok(Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([a[8], a[9]]),
            )))
        }
        0x21 => {
            let a = block
                .get(..36)
                .ok_or(ProxyError::Malformed("short IPv6 addresses"))?;
            let mut octets = [0; 16];
            octets.copy_from_slice(&a[..16]);
            Ok(Some(SocketAddr::new(
                Ipv6Addr::from(octets).into(),
                u16::from_be_bytes([a[32], a[33]]),
            )))
        }
        _ => Ok(None),
    }
}

/// Reads the header at the start of `stream`, exactly; the client's
/// address it names, if it names one.
pub async fn read<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Option<SocketAddr>> {
    let invalid = |e: ProxyError| io::Error::new(io::ErrorKind::InvalidData, e);
    let mut head = vec![0; MIN];
    stream.read_exact(&mut head).await?;
    if head[..12] == *V2 {
        let mut fixed = [0; 16];
        fixed[..MIN].copy_from_slice(&head);
        stream.read_exact(&mut fixed[MIN..]).await?;
        let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
        if len > V2_MAX {
            return Err(invalid(ProxyError::Malformed("too long")));
        }
        let mut block = vec![0; len];
        stream.read_exact(&mut block).await?;
        return parse_v2(&fixed, &block).map_err(invalid);
    }
    if !head.starts_with(b"PROXY ") {
        return Err(invalid(ProxyError::Missing));
    }
    // A line, read a byte at a time so that nothing after it is taken.
    while !head.ends_with(b"\r\n") {
        if head.len() >= V1_MAX {
            return Err(invalid(ProxyError::Malformed("line too long")));
        }
        head.push(stream.read_u8().await?);
    }
    parse_v1(&head).map_err(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn both_versions_name_the_client_and_leave_what_follows() {
        let mut v1: &[u8] = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 8883\r\n\x16\x03\x01";
        assert_eq!(
            read(&mut v1).await.expect("v1"),
            Some("203.0.113.7:51000".parse().expect("addr"))
        );
        assert_eq!(v1, b"\x16\x03\x01");
        let mut v2 = V2.to_vec();
        v2.extend([0x21, 0x21, 0, 40]);
        v2.extend("2001:db8::7".parse::<Ipv6Addr>().expect("v6").octets());
        v2.extend([0; 16]);
        v2.extend(443u16.to_be_bytes());
        v2.extend(8883u16.to_be_bytes());
        v2.extend([0x04, 0, 1, 0xaa]);
        v2.push(0x16);
        let mut rest = v2.as_slice();
        assert_eq!(
            read(&mut rest).await.expect("v2"),
            Some("[2001:db8::7]:443".parse().expect("addr"))
        );
        assert_eq!(rest, b"\x16");
        let mut unknown: &[u8] = b"PROXY UNKNOWN\r\n";
        assert_eq!(read(&mut unknown).await.expect("unknown"), None);
        let mut local = V2.to_vec();
        local.extend([0x20, 0x00, 0, 0]);
        assert_eq!(read(&mut local.as_slice()).await.expect("local"), None);
    }

    #[tokio::test]
    async fn anything_else_is_refused() {
        for bad in [
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03abcdefgh"[..],
            b"PROXY TCP4 203.0.113.7 10.0.0.1 51000\r\n",
            b"PROXY TCP6 203.0.113.7 10.0.0.1 51000 8883\r\n",
            b"PROXY TCP4 999.0.113.7 10.0.0.1 51000 8883\r\n",
        ] {
            let mut input = bad;
            assert!(read(&mut input).await.is_err(), "{bad:?}");
        }
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(200));
        assert!(read(&mut long.as_bytes()).await.is_err());
        let mut huge = V2.to_vec();
        huge.extend([0x21, 0x11, 0xff, 0xff]);
        assert!(read(&mut huge.as_slice()).await.is_err());
    }
}
