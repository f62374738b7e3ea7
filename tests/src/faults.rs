//! Faults injected between the code under test and the emulators, at the
//! network level, so that the SDK clients, their retries and our own error
//! handling all see what they would see on AWS.
//!
//! - [`Outage`]: a TCP proxy that goes dark (cuts and refuses connections),
//!   as a restarting service or a network partition does.
//! - [`Throttle`]: an HTTP proxy that answers a share of requests with the
//!   service's own throttling error, as AWS does when a caller goes over a
//!   quota.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// A TCP proxy in front of an emulator that can go dark: while it is down
/// it cuts every open connection and refuses new ones, as a restarting
/// service (or a network partition) does to its clients. Clients built on
/// [`Outage::config`] go through it; the test's own clients do not.
#[derive(Debug)]
pub struct Outage {
    addr: std::net::SocketAddr,
    down: tokio::sync::watch::Sender<bool>,
    /// Connections cut or refused while down.
    pub cut: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Outage {
    /// A proxy to `upstream` (`http://host:port`), up.
    pub async fn start(upstream: &str) -> Outage {
        let target = upstream.trim_start_matches("http://").trim_end_matches('/').to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("proxy port");
        let addr = listener.local_addr().expect("proxy address");
        let (down, down_rx) = tokio::sync::watch::channel(false);
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = cut.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if *down_rx.borrow() {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    drop(client);
                    continue;
                }
                let (target, mut down_rx, counter) = (target.clone(), down_rx.clone(), counter.clone());
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = down_rx.wait_for(|d| *d) => {
                            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        Outage { addr, down, cut }
    }

    /// `config` with its endpoint through the proxy.
    pub fn config(&self, config: &aws_config::SdkConfig) -> aws_config::SdkConfig {
        config.to_builder().endpoint_url(format!("http://{}", self.addr)).build()
    }

    /// Goes dark (`true`) or comes back (`false`).
    pub fn set_down(&self, down: bool) {
        let _ = self.down.send(down);
    }
}

/// An HTTP proxy in front of an emulator that answers a share of the
/// requests with the service's throttling error instead of forwarding
/// them, in the service's own protocol: `ThrottlingException` in the JSON
/// protocols (SQS, EventBridge, Timestream, DynamoDB), `Throttling` in the
/// query protocol (SNS). Requests are picked at random, so a retried call
/// can be throttled again and some calls exhaust the SDK's retries: then our
/// code's own handling of transient errors is what keeps events from being
/// lost. Clients built on [`Throttle::config`] go through it.
#[derive(Debug)]
pub struct Throttle {
    addr: std::net::SocketAddr,
    throttled: Arc<Mutex<BTreeMap<String, usize>>>,
}

type ProxyBody = BoxBody<Bytes, hyper::Error>;

impl Throttle {
    /// A proxy to `upstream` (`http://host:port`) throttling `share` (0–1)
    /// of the requests.
    pub async fn start(upstream: &str, share: f64) -> Throttle {
        let upstream = upstream.trim_end_matches('/').to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("proxy port");
        let addr = listener.local_addr().expect("proxy address");
        let throttled = Arc::new(Mutex::new(BTreeMap::new()));
        let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new()).build_http();
        let counts = throttled.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (client, upstream, counts) = (client.clone(), upstream.clone(), counts.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let (client, upstream, counts) = (client.clone(), upstream.clone(), counts.clone());
                        async move { Ok::<_, Infallible>(answer(request, &client, &upstream, share, &counts).await) }
                    });
                    // A client closing its connection ends this task.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Throttle { addr, throttled }
    }

    /// `config` with its endpoint through the proxy.
    pub fn config(&self, config: &aws_config::SdkConfig) -> aws_config::SdkConfig {
        config.to_builder().endpoint_url(self.url()).build()
    }

    /// The proxy's endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests throttled so far, by service (the signing name in the
    /// request's credential scope: `sqs`, `sns`, `events`, ...).
    pub fn throttled(&self) -> BTreeMap<String, usize> {
        self.throttled.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

async fn answer(
    request: Request<Incoming>,
    client: &Client<HttpConnector, Incoming>,
    upstream: &str,
    share: f64,
    counts: &Mutex<BTreeMap<String, usize>>,
) -> Response<ProxyBody> {
    if fastrand::f64() < share {
        if let Ok(mut counts) = counts.lock() {
            *counts.entry(service(&request)).or_default() += 1;
        }
        return throttling(&request);
    }
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = match format!("{upstream}{path}").parse() {
        Ok(uri) => uri,
        Err(e) => return plain(StatusCode::BAD_GATEWAY, format!("bad upstream URI: {e}")),
    };
    match client.request(Request::from_parts(parts, body)).await {
        Ok(response) => response.map(BodyExt::boxed),
        // The SDK treats a 502 as transient, as it would from AWS.
        Err(e) => plain(StatusCode::BAD_GATEWAY, format!("upstream: {e}")),
    }
}

/// The service a request is for: the signing name in its SigV4 credential
/// scope (`Credential=AKID/20261127/us-east-1/sqs/aws4_request`).
fn service<B>(request: &Request<B>) -> String {
    request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|auth| auth.split("Credential=").nth(1))
        .and_then(|scope| scope.split('/').nth(3))
        .unwrap_or("unknown")
        .to_owned()
}

/// The throttling error of the request's protocol: JSON when the request
/// names its operation in `X-Amz-Target`, else the query protocol's XML.
fn throttling<B>(request: &Request<B>) -> Response<ProxyBody> {
    let (content_type, body) = if request.headers().contains_key("x-amz-target") {
        (
            "application/x-amz-json-1.0",
            r#"{"__type":"ThrottlingException","message":"Rate exceeded (injected by the test proxy)"}"#.to_owned(),
        )
    } else {
        (
            "text/xml",
            "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code>\
             <Message>Rate exceeded (injected by the test proxy)</Message></Error>\
             <RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>"
                .to_owned(),
        )
    };
    let mut response = plain(StatusCode::BAD_REQUEST, body);
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

fn plain(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut response = Response::new(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response
}
