//! Server links: `sotto://HOST:PORT#fp=<sha256 of the certificate, hex>`.
//! The fingerprint is the trust anchor: the client connects only to a
//! server that presents exactly that certificate.

use std::fmt;

use crate::ClientError;

/// A parsed server link.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerLink {
    /// Host name or IP address (IPv6 in brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// SHA-256 of the server's certificate.
    pub fingerprint: [u8; 32],
}

impl ServerLink {
    /// Parses a link.
    pub fn parse(s: &str) -> Result<Self, ClientError> {
        let bad = |why: &str| ClientError::BadLink(why.to_owned());
        let rest = s
            .trim()
            .strip_prefix("sotto://")
            .ok_or_else(|| bad("expected sotto://HOST:PORT#fp=FINGERPRINT"))?;
        let (addr, frag) = rest
            .split_once('#')
            .ok_or_else(|| bad("missing #fp= certificate fingerprint"))?;
        let fp_hex = frag
            .strip_prefix("fp=")
            .ok_or_else(|| bad("missing #fp= certificate fingerprint"))?;
        let mut fingerprint = [0u8; 32];
        hex::decode_to_slice(fp_hex, &mut fingerprint)
            .map_err(|_| bad("fingerprint must be 64 hex digits"))?;
        let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad("missing :PORT"))?;
        let port: u16 = port.parse().map_err(|_| bad("invalid port"))?;
        if host.is_empty() || host.contains('/') {
            return Err(bad("invalid host"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            fingerprint,
        })
    }

    /// `host:port`, for connecting.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl fmt::Display for ServerLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sotto://{}:{}#fp={}",
            self.host,
            self.port,
            hex::encode(self.fingerprint)
        )
    }
}

impl fmt::Debug for ServerLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerLink({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let fp = "ab".repeat(32);
        let s = format!("sotto://127.0.0.1:7443#fp={fp}");
        let l = ServerLink::parse(&s).unwrap();
        assert_eq!(l.host, "127.0.0.1");
        assert_eq!(l.port, 7443);
        assert_eq!(l.to_string(), s);
        let v6 = ServerLink::parse(&format!("sotto://[::1]:9#fp={fp}")).unwrap();
        assert_eq!(v6.authority(), "[::1]:9");
    }

    #[test]
    fn rejects_bad_links() {
        let fp = "ab".repeat(32);
        for bad in [
            "https://x:1#fp=00".to_owned(),
            "sotto://x:1".to_owned(),
            "sotto://x:1#fp=zz".to_owned(),
            format!("sotto://x#fp={fp}"),
            format!("sotto://x:99999#fp={fp}"),
            format!("sotto://:1#fp={fp}"),
        ] {
            assert!(
                matches!(ServerLink::parse(&bad), Err(ClientError::BadLink(_))),
                "{bad}"
            );
        }
    }
}
