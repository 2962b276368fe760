//! `smtp.url`, `smtp.from` and `smtp.hello_name`: where the smtp provider connects, as whom it writes and
//! the name it gives in EHLO (docs/providers/smtp.md). Parsed at load; the provider only reads them.

use lettre::message::Mailbox;

/// How the connection is secured: by the URL's scheme and `tls=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    Plain,
    StartTls,
    Implicit,
}

/// Where and how to connect, from `smtp.url`. `Debug` shows no credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    host: String,
    port: u16,
    security: Security,
    credentials: Option<(String, String)>,
}

impl Target {
    /// `smtp://127.0.0.1:25`: the relay used when `smtp.url` is unset but a chain names smtp.
    pub fn local() -> Target {
        Target {
            host: "127.0.0.1".into(),
            port: 25,
            security: Security::Plain,
            credentials: None,
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn security(&self) -> Security {
        self.security
    }

    /// AUTH's user and password, percent-decoded.
    pub fn credentials(&self) -> Option<&(String, String)> {
        self.credentials.as_ref()
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("credentials", &self.credentials.as_ref().map(|_| "***"))
            .finish()
    }
}

/// What is wrong with `smtp.url`, in words that never echo it (it may hold a password).
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("not a URL like smtp://host:25")]
    NotAUrl(#[source] url::ParseError),
    #[error("this tls= value is not supported (use tls=required)")]
    Tls,
    #[error("scheme `{0}` is not smtp:// or smtps://")]
    Scheme(String),
    #[error("no host")]
    NoHost,
    #[error("user or password is not valid percent-encoded UTF-8")]
    Encoding(#[source] std::str::Utf8Error),
    #[error("a user needs a password (user:pass@)")]
    UserWithoutPassword,
}

/// Parses `smtp.url`.
pub fn parse_url(url: &str) -> Result<Target, UrlError> {
    let parsed = url::Url::parse(url).map_err(UrlError::NotAUrl)?;
    let tls = parsed
        .query_pairs()
        .find(|(k, _)| k == "tls")
        .map(|(_, v)| v.into_owned());
    let (security, default_port) = match (parsed.scheme(), tls.as_deref()) {
        ("smtp", None) => (Security::Plain, 25),
        ("smtp", Some("required")) => (Security::StartTls, 587),
        ("smtps", None) => (Security::Implicit, 465),
        ("smtp", Some(_)) => return Err(UrlError::Tls),
        (scheme, _) => return Err(UrlError::Scheme(scheme.to_owned())),
    };
    let host = parsed.host_str().filter(|h| !h.is_empty()).ok_or(UrlError::NoHost)?;
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(UrlError::Encoding)
    };
    let credentials = match parsed.password() {
        Some(password) => Some((decode(parsed.username())?, decode(password)?)),
        None if !parsed.username().is_empty() => return Err(UrlError::UserWithoutPassword),
        None => None,
    };
    Ok(Target {
        host: host.trim_start_matches('[').trim_end_matches(']').to_owned(),
        port: parsed.port().unwrap_or(default_port),
        security,
        credentials,
    })
}

/// `smtp.from` is not a mailbox.
#[derive(Debug, thiserror::Error)]
#[error("not a mailbox like \"Acme <no-reply@acme.test>\"")]
pub struct FromError(#[source] lettre::address::AddressError);

pub fn parse_from(from: &str) -> Result<Mailbox, FromError> {
    from.parse::<Mailbox>().map_err(FromError)
}

/// `smtp.hello_name`: a host name (`mail.acme.test`) or an address literal (`[192.0.2.1]`,
/// `[IPv6:2001:db8::1]`), as RFC 5321 §4.1.1.1 has EHLO name the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloName(String);

impl HelloName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, thiserror::Error)]
#[error("not a host name like mail.acme.test (letters, digits, `-` and `.`) nor an address literal like [192.0.2.1]")]
pub struct HelloNameError;

pub fn parse_hello_name(name: &str) -> Result<HelloName, HelloNameError> {
    let literal =
        name.strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .map(|inner| match inner.strip_prefix("IPv6:") {
                Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
                None => inner.parse::<std::net::Ipv4Addr>().is_ok(),
            });
    let label = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let ok = literal.unwrap_or_else(|| name.len() <= 253 && name.split('.').all(label));
    if ok {
        Ok(HelloName(name.to_owned()))
    } else {
        Err(HelloNameError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_names() {
        for ok in [
            "mail.acme.test",
            "acme",
            "a-b.example",
            "[192.0.2.1]",
            "[IPv6:2001:db8::1]",
        ] {
            assert_eq!(parse_hello_name(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "mail acme",
            "-x.test",
            "x..test",
            "exämple.test",
            "[999.1.1.1]",
            "[2001:db8::1]",
            "a_b.test",
        ] {
            assert!(parse_hello_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls() {
        let t = parse_url("smtp://127.0.0.1:2525").unwrap();
        assert_eq!((t.port, t.security, t.credentials), (2525, Security::Plain, None));
        let t = parse_url("smtp://u%40x:p%3Aw@mail.test?tls=required").unwrap();
        assert_eq!(t.security, Security::StartTls);
        assert_eq!(t.port, 587);
        assert_eq!(t.credentials, Some(("u@x".into(), "p:w".into())));
        let t = parse_url("smtps://mail.test").unwrap();
        assert_eq!((t.port, t.security), (465, Security::Implicit));
        assert!(parse_url("http://mail.test").is_err());
        assert!(parse_url("smtp://user@mail.test").is_err());
        for url in ["ftp://u:hunter2@x", "smtp://u:p@mail.test?tls=hunter2"] {
            match parse_url(url) {
                Err(e) => assert!(!format!("{e} {e:?}").contains("hunter2"), "{e}"),
                Ok(_) => panic!("{url} accepted"),
            }
        }
    }
}
