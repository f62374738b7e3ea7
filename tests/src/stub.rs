//! A stand-in for EventBridge's PutEvents behind an API Gateway
//! integration: an HTTP server that answers each request with the next of a
//! list of recorded answers (status, headers, body), and keeps the requests.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// One answer of the bus: what the stub sends back.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The `Content-Type`.
    pub content_type: String,
    /// The body, as sent.
    pub body: String,
}

impl Answer {
    /// An answer from a fixture: `{"status": 400, "contentType": "...",
    /// "body": {...}}`.
    pub fn from_fixture(fixture: &Value) -> Answer {
        Answer {
            status: fixture["status"].as_u64().and_then(|s| u16::try_from(s).ok()).expect("a status"),
            content_type: fixture["contentType"].as_str().unwrap_or("application/x-amz-json-1.1").to_owned(),
            // A string is a body that is not JSON, sent as it is.
            body: match &fixture["body"] {
                Value::String(text) => text.clone(),
                json => json.to_string(),
            },
        }
    }
}

/// The stub: answers in order, requests kept.
#[derive(Debug)]
pub struct PutEventsStub {
    addr: std::net::SocketAddr,
    answers: Arc<Mutex<VecDeque<Answer>>>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl PutEventsStub {
    /// A stub on a free port of 127.0.0.1.
    pub async fn start() -> PutEventsStub {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("stub port");
        let addr = listener.local_addr().expect("stub address");
        let answers: Arc<Mutex<VecDeque<Answer>>> = Arc::default();
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let (queued, seen) = (answers.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (queued, seen) = (queued.clone(), seen.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let (queued, seen) = (queued.clone(), seen.clone());
                        async move { Ok::<_, Infallible>(reply(request, &queued, &seen).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        PutEventsStub { addr, answers, requests }
    }

    /// The stub's URL.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Queues `answer` for the next request.
    pub fn push(&self, answer: Answer) {
        if let Ok(mut answers) = self.answers.lock() {
            answers.push_back(answer);
        }
    }

    /// The bodies of the requests received so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

async fn reply(
    request: Request<Incoming>,
    answers: &Mutex<VecDeque<Answer>>,
    requests: &Mutex<Vec<String>>,
) -> Response<Full<Bytes>> {
    let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    if let Ok(mut requests) = requests.lock() {
        requests.push(String::from_utf8_lossy(&body).into_owned());
    }
    let next = answers.lock().ok().and_then(|mut a| a.pop_front());
    let Some(answer) = next else {
        let mut response = Response::new(Full::new(Bytes::from_static(b"no answer queued")));
        *response.status_mut() = StatusCode::IM_A_TEAPOT;
        return response;
    };
    let mut response = Response::new(Full::new(Bytes::from(answer.body)));
    *response.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(value) = answer.content_type.parse() {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}
