//! How the HTTP client reaches a provider: directly, or through the proxy that the environment names
//! (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`, upper or lower case, read as curl reads them),
//! as reqwest did before herald used hyper-util's client directly.
//!
//! An `https` provider is reached through a `CONNECT` tunnel, with TLS to the provider inside it (the proxy
//! sees the host and port only); an `http` one by sending the request to the proxy in absolute form. A
//! proxy's own credentials (`http://user:pass@proxy:3128`) go in `Proxy-Authorization`.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use http::header::HeaderValue;
use http::uri::Scheme;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use tower_service::Service;

type BoxError = Box<dyn StdError + Send + Sync>;

/// The proxy variables set in the environment, as the start-up log tells them: each as
/// `scheme://host:port`, never with its credentials, or why it is not of use.
pub fn proxy_settings() -> Vec<ProxySetting> {
    settings_of(|variable| std::env::var(variable).ok())
}

fn settings_of(env: impl Fn(&str) -> Option<String>) -> Vec<ProxySetting> {
    let mut settings = Vec::new();
    for variable in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        let Some(value) = env(variable).filter(|v| !v.trim().is_empty()) else {
            continue;
        };
        // curl's reading: a proxy without a scheme is http.
        let text = if value.contains("://") {
            value
        } else {
            format!("http://{value}")
        };
        let setting = match url::Url::parse(&text) {
            Ok(url) if url.host_str().is_some() => {
                let proxy = format!(
                    "{}://{}:{}",
                    url.scheme(),
                    url.host_str().unwrap_or_default(),
                    url.port_or_known_default().unwrap_or(80)
                );
                match url.scheme() {
                    "http" | "https" => ProxySetting::Used { variable, proxy },
                    _ => ProxySetting::Unusable {
                        variable,
                        why: format!(
                            "{} proxies are not supported: providers behind it cannot be reached",
                            url.scheme()
                        ),
                    },
                }
            }
            _ => ProxySetting::Unusable {
                variable,
                why: "not a proxy URL: ignored, providers are reached directly".into(),
            },
        };
        settings.push(setting);
    }
    settings
}

/// Tells the operator at start-up which proxy the HTTP providers go through, and which proxy variable is of
/// no use (see [`proxy_settings`]).
pub fn log_proxy_settings() {
    for setting in proxy_settings() {
        match setting {
            ProxySetting::Used { variable, proxy } => {
                let no_proxy = std::env::var("NO_PROXY").or_else(|_| std::env::var("no_proxy")).ok();
                tracing::info!(variable, proxy, no_proxy, "HTTP providers go through a proxy");
            }
            ProxySetting::Unusable { variable, why } => tracing::warn!(variable, "proxy setting: {why}"),
        }
    }
}

/// One proxy variable of the environment (see [`proxy_settings`]).
#[derive(Debug, PartialEq, Eq)]
pub enum ProxySetting {
    Used { variable: &'static str, proxy: String },
    Unusable { variable: &'static str, why: String },
}

/// Connects to a provider, or to the proxy in front of it.
#[derive(Clone)]
pub struct Connector {
    /// TCP, with TLS for `https`: a provider without a proxy, and a proxy itself.
    direct: HttpsConnector<HttpConnector>,
    tls: Arc<rustls::ClientConfig>,
    proxies: Arc<Matcher>,
}

impl Connector {
    pub fn new(http: HttpConnector, tls: rustls::ClientConfig, proxies: Matcher) -> Connector {
        let direct = HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Connector {
            direct,
            tls: Arc::new(tls),
            proxies: Arc::new(proxies),
        }
    }

    /// The `Proxy-Authorization` an `http` request to `uri` carries: the request itself goes to the proxy.
    pub fn proxy_authorization(&self, uri: &Uri) -> Option<HeaderValue> {
        if uri.scheme() != Some(&Scheme::HTTP) {
            return None;
        }
        self.proxies.intercept(uri)?.basic_auth().cloned()
    }
}

impl Service<Uri> for Connector {
    type Response = Conn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let mut direct = self.direct.clone();
        let Some(proxy) = self.proxies.intercept(&dst) else {
            return Box::pin(async move { Ok(Conn::new(direct.call(dst).await?, false)) });
        };
        if dst.scheme() == Some(&Scheme::HTTPS) {
            let mut tunnel = Tunnel::new(proxy.uri().clone(), direct);
            if let Some(auth) = proxy.basic_auth() {
                tunnel = tunnel.with_auth(auth.clone());
            }
            let mut through = HttpsConnectorBuilder::new()
                .with_tls_config((*self.tls).clone())
                .https_only()
                .enable_http1()
                .wrap_connector(tunnel);
            Box::pin(async move { Ok(Conn::new(through.call(dst).await?, false)) })
        } else {
            let proxy = proxy.uri().clone();
            Box::pin(async move { Ok(Conn::new(direct.call(proxy).await?, true)) })
        }
    }
}

trait Io: Read + Write + Send + Unpin {}
impl<T: Read + Write + Send + Unpin> Io for T {}

/// A connection to a provider, direct or tunnelled, or to a proxy that takes the requests themselves
/// (`proxied`: hyper then writes them in absolute form).
pub struct Conn {
    io: Box<dyn Io>,
    proxied: bool,
}

impl Conn {
    fn new(io: impl Io + 'static, proxied: bool) -> Conn {
        Conn {
            io: Box::new(io),
            proxied,
        }
    }
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        Connected::new().proxy(self.proxied)
    }
}

impl Read for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.io).poll_read(cx, buf)
    }
}

impl Write for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.io).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_settings_name_the_proxy_without_its_credentials_or_say_why_not() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
        };
        let used = |variable, proxy: &str| ProxySetting::Used {
            variable,
            proxy: proxy.into(),
        };
        assert_eq!(settings_of(env(&[])), []);
        assert_eq!(
            settings_of(env(&[
                ("HTTPS_PROXY", "http://user:s3cret@egress.example:3128"),
                ("http_proxy", "egress.example:8080"),
                ("ALL_PROXY", "https://egress.example"),
                ("HTTP_PROXY", " "),
            ])),
            [
                used("HTTPS_PROXY", "http://egress.example:3128"),
                used("http_proxy", "http://egress.example:8080"),
                used("ALL_PROXY", "https://egress.example:443"),
            ]
        );
        let unusable = settings_of(env(&[
            ("HTTPS_PROXY", "socks5://u:s3cret@127.0.0.1:1080"),
            ("all_proxy", "::"),
        ]));
        assert!(
            matches!(&unusable[..], [
                ProxySetting::Unusable { variable: "HTTPS_PROXY", why: socks },
                ProxySetting::Unusable { variable: "all_proxy", why: bad },
            ] if socks.starts_with("socks5 proxies are not supported") && bad.starts_with("not a proxy URL")),
            "{unusable:?}"
        );
        assert!(!format!("{unusable:?}").contains("s3cret"));
    }
}
