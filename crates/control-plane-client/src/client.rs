//! A small client of the REST API: plain requests with a timeout, errors in the API's problem
//! format, and [`EventStream`], the lines of a `?watch=true` stream (which [`crate::follow`]
//! keeps open).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode, Uri, header};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use meshlimit_policy::Kind;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::paths::{self, resource_path, segment};
use crate::wire::{
    AgentReport, ApplyRequest, DataplaneEvent, DataplaneReport, ErrorBody, Page, Selection,
    SourceFile, StatusResponse, StreamEvent, WriteResult,
};

/// How long a plain request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid control-plane URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot reach the control plane at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The control plane answered with an error status.
    #[error("{} {}: {}", .status, .body.title, .body.detail)]
    Api { status: u16, body: ErrorBody },
    #[error("unexpected answer from {url}: {reason}")]
    Protocol { url: String, reason: String },
}

impl ClientError {
    /// The HTTP status when the control plane answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A control-plane API client. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Client {
    /// `base` is `http://host:port` (an optional path prefix is kept).
    pub fn new(base: &str, token: Option<String>) -> Result<Client, ClientError> {
        let base = base.trim_end_matches('/').to_string();
        let uri: Uri =
            base.parse()
                .map_err(|e: hyper::http::uri::InvalidUri| ClientError::Url {
                    url: base.clone(),
                    reason: e.to_string(),
                })?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(ClientError::Url {
                    url: base,
                    reason: format!(
                        "scheme {other:?} is not supported: use http:// (terminate TLS in front)"
                    ),
                });
            }
            None => {
                return Err(ClientError::Url {
                    url: base,
                    reason: "missing scheme: write http://host:port".into(),
                });
            }
        }
        let http = HyperClient::builder(TokioExecutor::new()).build_http();
        Ok(Client {
            base,
            token: token.filter(|t| !t.is_empty()),
            http,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        accept: &str,
        body: Bytes,
    ) -> Result<hyper::Response<Incoming>, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = Request::builder()
            .method(method)
            .uri(&url)
            .header(header::ACCEPT, accept);
        if let Some(media) = content_type {
            request = request.header(header::CONTENT_TYPE, media);
        }
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| ClientError::Url {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.http.request(request))
            .await
            .map_err(|_| ClientError::Unreachable {
                url: url.clone(),
                reason: format!("no answer within {REQUEST_TIMEOUT:?}"),
            })?
            .map_err(|e| ClientError::Unreachable {
                url: url.clone(),
                reason: error_chain(&e),
            })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let bytes = read_all(&url, response.into_body()).await?;
        let body = serde_json::from_slice::<ErrorBody>(&bytes).unwrap_or_else(|_| ErrorBody {
            status: status.as_u16(),
            title: status.canonical_reason().unwrap_or("error").to_string(),
            detail: String::from_utf8_lossy(&bytes).trim().to_string(),
            invalid_parameters: Vec::new(),
        });
        Err(ClientError::Api {
            status: status.as_u16(),
            body,
        })
    }

    /// A request whose whole answer is read: `(status, body)`.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        accept: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let url = format!("{}{path}", self.base);
        let response = self.send(method, path, content_type, accept, body).await?;
        let status = response.status();
        let bytes = tokio::time::timeout(REQUEST_TIMEOUT, read_all(&url, response.into_body()))
            .await
            .map_err(|_| ClientError::Unreachable {
                url: url.clone(),
                reason: "the answer did not complete in time".into(),
            })??;
        Ok((status, bytes))
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let content_type = body.as_ref().map(|_| "application/json");
        let (_, bytes) = self
            .call(
                method,
                path,
                content_type,
                "application/json",
                Bytes::from(body.unwrap_or_default()),
            )
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
            url: format!("{}{path}", self.base),
            reason: e.to_string(),
        })
    }

    fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>, ClientError> {
        serde_json::to_vec(value).map_err(|e| ClientError::Protocol {
            url: self.base.clone(),
            reason: e.to_string(),
        })
    }

    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.json(Method::GET, path, None).await
    }

    /// A plain-text `GET` (an admin endpoint's `/metrics`).
    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let (_, bytes) = self
            .call(Method::GET, path, None, "text/plain", Bytes::new())
            .await?;
        String::from_utf8(bytes.to_vec()).map_err(|e| ClientError::Protocol {
            url: format!("{}{path}", self.base),
            reason: e.to_string(),
        })
    }

    /// `POST /apply`: every document of every file, all or nothing.
    pub async fn apply(
        &self,
        files: Vec<SourceFile>,
        dry_run: bool,
    ) -> Result<WriteResult, ClientError> {
        let body = self.encode(&ApplyRequest { files, dry_run })?;
        self.json(Method::POST, "/apply", Some(body)).await
    }

    pub async fn delete(
        &self,
        kind: Kind,
        mesh: &str,
        name: &str,
    ) -> Result<WriteResult, ClientError> {
        self.json(Method::DELETE, &resource_path(kind, mesh, name), None)
            .await
    }

    /// One resource as JSON.
    pub async fn get_resource(
        &self,
        kind: Kind,
        mesh: &str,
        name: &str,
    ) -> Result<serde_json::Value, ClientError> {
        self.get_json(&resource_path(kind, mesh, name)).await
    }

    /// Every resource of a kind (in one mesh, or all with `None`), following the pages.
    pub async fn list(
        &self,
        kind: Kind,
        mesh: Option<&str>,
    ) -> Result<Vec<serde_json::Value>, ClientError> {
        let mut path = match (kind, mesh) {
            (Kind::Mesh, _) => "/meshes".to_string(),
            (_, Some(mesh)) => format!("/meshes/{}/{}", segment(mesh), paths::collection(kind)),
            (_, None) => format!("/{}", paths::collection(kind)),
        };
        let mut items = Vec::new();
        loop {
            let page: Page<serde_json::Value> = self.get_json(&path).await?;
            items.extend(page.items);
            match page.next {
                Some(next) if next.starts_with('/') => path = next,
                _ => return Ok(items),
            }
        }
    }

    pub async fn selection(
        &self,
        kind: Kind,
        mesh: &str,
        name: &str,
    ) -> Result<Selection, ClientError> {
        self.get_json(&format!(
            "{}/_resources/dataplanes",
            resource_path(kind, mesh, name)
        ))
        .await
    }

    pub async fn dataplane_limits(
        &self,
        mesh: &str,
        name: &str,
    ) -> Result<DataplaneEvent, ClientError> {
        self.get_json(&format!(
            "{}/limits",
            resource_path(Kind::Dataplane, mesh, name)
        ))
        .await
    }

    pub async fn status(&self) -> Result<StatusResponse, ClientError> {
        self.get_json("/status").await
    }

    pub async fn report_dataplane(
        &self,
        mesh: &str,
        name: &str,
        report: &DataplaneReport,
    ) -> Result<(), ClientError> {
        let body = self.encode(report)?;
        let path = format!("{}/status", resource_path(Kind::Dataplane, mesh, name));
        self.call(
            Method::POST,
            &path,
            Some("application/json"),
            "application/json",
            Bytes::from(body),
        )
        .await
        .map(|_| ())
    }

    pub async fn report_agent(&self, name: &str, report: &AgentReport) -> Result<(), ClientError> {
        let body = self.encode(report)?;
        let path = format!("/kernel-agents/{}/status", segment(name));
        self.call(
            Method::POST,
            &path,
            Some("application/json"),
            "application/json",
            Bytes::from(body),
        )
        .await
        .map(|_| ())
    }

    /// Opens a `?watch=true` stream.
    pub async fn watch<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<EventStream<T>, ClientError> {
        let response = self
            .send(
                Method::GET,
                path,
                None,
                "application/x-ndjson",
                Bytes::new(),
            )
            .await?;
        Ok(EventStream {
            url: format!("{}{path}", self.base),
            body: response.into_body(),
            buffer: Vec::new(),
            _event: std::marker::PhantomData,
        })
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

async fn read_all(url: &str, body: Incoming) -> Result<Bytes, ClientError> {
    body.collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| ClientError::Unreachable {
            url: url.to_string(),
            reason: error_chain(&e),
        })
}

/// The lines of a watch stream.
pub struct EventStream<T> {
    url: String,
    body: Incoming,
    buffer: Vec<u8>,
    _event: std::marker::PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> EventStream<T> {
    /// The next event; `Ok(None)` when the control plane closed the stream.
    pub async fn next(&mut self) -> Result<Option<StreamEvent<T>>, ClientError> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                let line = &line[..end];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(line)
                    .map(Some)
                    .map_err(|e| ClientError::Protocol {
                        url: self.url.clone(),
                        reason: format!("bad stream line: {e}"),
                    });
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(ClientError::Unreachable {
                        url: self.url.clone(),
                        reason: error_chain(&e),
                    });
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}
