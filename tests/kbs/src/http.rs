//! HTTP/1.1 (optionally TLS) plumbing of the test KBS: hyper on a tokio
//! listener, bounded request bodies, then `protocol::handle`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::protocol::{self, Reply, COOKIE_NAME};
use crate::Shared;

const MAX_REQUEST_BODY: usize = 1 << 20;

pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stop: tokio::sync::oneshot::Receiver<()>) {
    let tls = shared.config.lock().unwrap_or_else(|p| p.into_inner()).tls.clone();
    let acceptor = match tls.map(|(cert, key)| acceptor(&cert, &key)).transpose() {
        Ok(a) => a,
        Err(err) => {
            tracing::error!(%err, "test KBS: bad TLS material");
            return;
        }
    };
    // Connections are owned here: a stopped KBS drops them all at once, as a
    // KBS process that died would (kept-alive clients see a reset, not answers).
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut stop => {
                connections.abort_all();
                return;
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(_) => continue,
            },
        };
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| handle(shared.clone(), req));
            let builder = hyper::server::conn::http1::Builder::new();
            match acceptor {
                Some(acceptor) => {
                    if let Ok(tls) = acceptor.accept(stream).await {
                        let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                    }
                }
                None => {
                    let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                }
            }
        });
    }
}

fn acceptor(cert_pem: &str, key_pem: &str) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    shared.stats.requests.fetch_add(1, Ordering::SeqCst);
    if shared.unavailable_left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
        return Ok(to_response(Reply::error(503, "Unavailable", "test KBS told to be unavailable")));
    }
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let cookie = req
        .headers()
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(&format!("{COOKIE_NAME}=")).map(str::to_owned));
    let bearer = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let body = match Limited::new(req.into_body(), MAX_REQUEST_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(to_response(Reply::error(401, "InvalidRequest", "request body too large"))),
    };
    let reply = protocol::handle(
        &shared,
        protocol::Incoming {
            method: &method,
            path: &path,
            cookie: cookie.as_deref(),
            bearer: bearer.as_deref(),
            body: &body,
        },
    );
    Ok(to_response(reply))
}

fn to_response(reply: Reply) -> Response<Full<Bytes>> {
    let mut builder = Response::builder().status(reply.status).header("content-type", reply.content_type);
    if let Some(cookie) = reply.set_cookie {
        builder = builder.header("set-cookie", cookie);
    }
    builder.body(Full::new(Bytes::from(reply.body))).expect("valid response")
}
