//! `transport_url` as oslo.messaging reads it:
//! `rabbit://user:pass@host1:5672,user:pass@host2:5672/vhost`.
//!
//! Several hosts name one cluster; the client tries them in order. A host
//! without credentials takes those of the host before it (oslo lets the
//! first host carry them for all); none at all is RabbitMQ's guest/guest.

use percent_encoding::percent_decode_str;

/// One broker of the URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
}

/// A parsed transport URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportUrl {
    pub hosts: Vec<Host>,
    /// The virtual host ("/" when the URL has none).
    pub vhost: String,
}

/// Why a transport URL was refused; the password never appears in it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error(
        "transport_url must start with rabbit:// (found scheme {0:?}; only RabbitMQ is supported)"
    )]
    Scheme(String),
    #[error("transport_url names no host")]
    NoHost,
    /// `index`: the host's place in the URL, from 0 (said from 1).
    #[error("transport_url host #{}: {problem}", .index + 1)]
    Host { index: usize, problem: String },
    #[error("transport_url: {0}")]
    Encoding(String),
}

fn decode(s: &str) -> Result<String, UrlError> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| UrlError::Encoding("a percent-escape does not decode to UTF-8".into()))
}

impl TransportUrl {
    pub fn parse(url: &str) -> Result<TransportUrl, UrlError> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            UrlError::Scheme(url.split(':').next().unwrap_or_default().to_string())
        })?;
        // oslo accepts "rabbit" and the kombu alias "amqp".
        if scheme != "rabbit" && scheme != "amqp" {
            return Err(UrlError::Scheme(scheme.to_string()));
        }
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (netloc, vhost) = match rest.split_once('/') {
            Some((n, v)) => (n, v),
            None => (rest, ""),
        };
        let vhost = if vhost.is_empty() {
            "/".to_string()
        } else {
            decode(vhost)?
        };
        if netloc.is_empty() {
            return Err(UrlError::NoHost);
        }
        let mut hosts: Vec<Host> = Vec::new();
        for (index, part) in netloc.split(',').enumerate() {
            let bad = |problem: &str| UrlError::Host {
                index,
                problem: problem.to_string(),
            };
            let (creds, hostport) = match part.rsplit_once('@') {
                Some((c, h)) => (Some(c), h),
                None => (None, part),
            };
            let (user, password) = match creds {
                Some(c) => {
                    let (u, p) = c.split_once(':').unwrap_or((c, ""));
                    (decode(u)?, decode(p)?)
                }
                None => match hosts.last() {
                    Some(prev) => (prev.user.clone(), prev.password.clone()),
                    None => ("guest".into(), "guest".into()),
                },
            };
            let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
                let (h, after) = v6
                    .split_once(']')
                    .ok_or_else(|| bad("an IPv6 address lacks its closing ']'"))?;
                (h.to_string(), after.strip_prefix(':'))
            } else {
                match hostport.split_once(':') {
                    Some((h, p)) => (h.to_string(), Some(p)),
                    None => (hostport.to_string(), None),
                }
            };
            if hostport.matches(':').count() > 1 && !hostport.starts_with('[') {
                return Err(bad(
                    "an IPv6 address goes in brackets (rabbit://user:pass@[::1]:5672/)",
                ));
            }
            if host.is_empty() {
                return Err(bad("the host name is empty"));
            }
            if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(bad(&format!(
                    "the host name {host:?} holds whitespace or control characters"
                )));
            }
            let port = match port {
                None | Some("") => 5672,
                Some(p) => p
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| bad(&format!("port {p:?} is not 1-65535")))?,
            };
            hosts.push(Host {
                host,
                port,
                user,
                password,
            });
        }
        Ok(TransportUrl { hosts, vhost })
    }

    /// The URL without passwords, for logs.
    pub fn redacted(&self) -> String {
        let hosts: Vec<String> = self
            .hosts
            .iter()
            .map(|h| format!("{}:***@{}", h.user, host_port(h)))
            .collect();
        // The default vhost "/" is the URL's empty path.
        let vhost = if self.vhost == "/" { "" } else { &self.vhost };
        format!("rabbit://{}/{vhost}", hosts.join(","))
    }
}

/// `host:port`, with brackets around an IPv6 address.
pub fn host_port(h: &Host) -> String {
    if h.host.contains(':') {
        format!("[{}]:{}", h.host, h.port)
    } else {
        format!("{}:{}", h.host, h.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_hosts_credentials_and_vhost() {
        let u = TransportUrl::parse(
            "rabbit://neutron:s%40cret@10.0.0.1:5672,10.0.0.2,n2:p2@[fd00::3]:5673/openstack%2Fl3",
        )
        .unwrap();
        assert_eq!(u.vhost, "openstack/l3");
        assert_eq!(
            u.hosts,
            vec![
                Host {
                    host: "10.0.0.1".into(),
                    port: 5672,
                    user: "neutron".into(),
                    password: "s@cret".into()
                },
                Host {
                    host: "10.0.0.2".into(),
                    port: 5672,
                    user: "neutron".into(),
                    password: "s@cret".into()
                },
                Host {
                    host: "fd00::3".into(),
                    port: 5673,
                    user: "n2".into(),
                    password: "p2".into()
                },
            ]
        );
        assert_eq!(
            u.redacted(),
            "rabbit://neutron:***@10.0.0.1:5672,neutron:***@10.0.0.2:5672,n2:***@[fd00::3]:5673/openstack/l3"
        );
    }

    #[test]
    fn defaults_and_errors() {
        let u = TransportUrl::parse("rabbit://broker").unwrap();
        assert_eq!(u.vhost, "/");
        assert_eq!(u.redacted(), "rabbit://guest:***@broker:5672/");
        assert_eq!((u.hosts[0].user.as_str(), u.hosts[0].port), ("guest", 5672));
        assert_eq!(
            TransportUrl::parse("kafka://x").unwrap_err(),
            UrlError::Scheme("kafka".into())
        );
        assert_eq!(
            TransportUrl::parse("rabbit:///v").unwrap_err(),
            UrlError::NoHost
        );
        assert_eq!(
            TransportUrl::parse("rabbit://a:b@h:99999/")
                .unwrap_err()
                .to_string(),
            "transport_url host #1: port \"99999\" is not 1-65535"
        );
        assert!(TransportUrl::parse("rabbit://u:p@[fd00::1/").is_err());
        assert_eq!(
            TransportUrl::parse("rabbit://u:p@h 1:5672/")
                .unwrap_err()
                .to_string(),
            "transport_url host #1: the host name \"h 1\" holds whitespace or control characters"
        );
        assert_eq!(
            TransportUrl::parse("rabbit://u:p@::1:5672/")
                .unwrap_err()
                .to_string(),
            "transport_url host #1: an IPv6 address goes in brackets \
             (rabbit://user:pass@[::1]:5672/)"
        );
    }
}
