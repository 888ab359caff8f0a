//! Where the API listens, as `--listen` gives it: `unix:/PATH` or `tcp:HOST:PORT`. Binding is
//! the daemon's (`api::server`).

use std::{net::SocketAddr, path::PathBuf, str::FromStr};

/// Where to listen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// A Unix socket path.
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
}

impl FromStr for Listen {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() || !path.starts_with('/') {
                return Err(format!(
                    "{text:?}: a unix socket path must be absolute (unix:/run/tracer/tracer.sock)"
                ));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = text.strip_prefix("tcp:") {
            return addr.parse().map(Self::Tcp).map_err(|e| {
                format!("{text:?}: {e} (expected tcp:HOST:PORT, e.g. tcp:127.0.0.1:7443)")
            });
        }
        Err(format!("{text:?}: expected unix:PATH or tcp:HOST:PORT"))
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn unix_and_tcp_addresses_parse() {
        assert_eq!(
            "unix:/run/tracer/tracer.sock".parse(),
            Ok(Listen::Unix(PathBuf::from("/run/tracer/tracer.sock")))
        );
        assert_eq!(
            "tcp:127.0.0.1:7443".parse(),
            Ok(Listen::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, 7443))))
        );
        assert_eq!(
            "tcp:[::]:7443".parse(),
            Ok(Listen::Tcp(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 7443))))
        );
    }

    #[test]
    fn relative_paths_host_names_and_bare_addresses_are_refused_with_the_expected_form() {
        for (text, expected) in [
            ("unix:", "must be absolute"),
            ("unix:tracer.sock", "must be absolute"),
            ("tcp:localhost:7443", "expected tcp:HOST:PORT"),
            ("tcp:127.0.0.1", "expected tcp:HOST:PORT"),
            ("127.0.0.1:7443", "expected unix:PATH or tcp:HOST:PORT"),
            (
                "/run/tracer/tracer.sock",
                "expected unix:PATH or tcp:HOST:PORT",
            ),
        ] {
            let error = text.parse::<Listen>().expect_err(text);
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }
}
