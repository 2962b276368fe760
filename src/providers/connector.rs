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
