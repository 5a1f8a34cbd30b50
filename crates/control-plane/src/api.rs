//! The REST API, in Kuma's style (`/meshes/{mesh}/{collection}/{name}`), plus the bulk apply,
//! the limit streams data planes follow, the status they report, and (`GET /xds`) the status of
//! the `meshlimit_xds` server when the process hosts one. `openapi.yaml` (next to this crate's
//! manifest) documents every route; [`error_response`] is the one place errors become HTTP
//! statuses.

use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, MatchedPath, Path, Query, Request, State};
use axum::handler::Handler;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use meshlimit_policy::{Kind, Problem, Resource};
use meshlimit_xds::XdsHandle;
use serde::{Deserialize, Serialize};

use crate::model;
use crate::ops::{Format, Metrics};
use crate::state::{ControlPlane, CpError};
use crate::store_state::{Entry, StoreState};
use crate::stream;
use crate::wire::{
    AgentReport, ApplyRequest, DataplaneEvent, DataplaneReport, ErrorBody, InvalidParameter,
    KernelEvent, Page, Selection, SourceFile, StoreCondition, StreamEvent,
};

/// How the API is served.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// When set, every request must carry `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Larger request bodies get 413.
    pub max_body_bytes: usize,
    /// How often a quiet watch stream sends a heartbeat line.
    pub heartbeat: Duration,
    /// The xDS server this process runs, whose status `GET /xds` answers; without it, 404.
    pub xds: Option<XdsHandle>,
    /// Serve `/ready` and `/metrics` too (the standalone control plane). Off by default: the
    /// all-in-one serves them on its admin routes, from [`ControlPlane::ready`] and
    /// [`Metrics::render`].
    pub serve_ops: bool,
    /// The API's counters (requests, refused connections), for `/metrics`.
    pub metrics: Metrics,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            token: None,
            max_body_bytes: 4 * 1024 * 1024,
            heartbeat: Duration::from_secs(5),
            xds: None,
            serve_ops: false,
            metrics: Metrics::new(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) cp: ControlPlane,
    pub(crate) config: ApiConfig,
}

/// Every endpoint, once: `(path, method, handler)`. [`router`] serves exactly these (the
/// [`OPS_PATHS`] only with [`ApiConfig::serve_ops`]) and [`routes`] lists them (a test holds
/// `openapi.yaml` to the same list).
fn endpoints() -> Vec<(&'static str, Method, MethodRouter<AppState>)> {
    vec![
        endpoint("/", Method::GET, index),
        endpoint("/ready", Method::GET, ready),
        endpoint("/metrics", Method::GET, metrics),
        endpoint("/meshes", Method::GET, list_meshes),
        endpoint("/meshes/{mesh}", Method::GET, get_mesh),
        endpoint("/meshes/{mesh}", Method::PUT, put_mesh),
        endpoint("/meshes/{mesh}", Method::DELETE, delete_mesh),
        endpoint("/meshes/{mesh}/{collection}", Method::GET, list_in_mesh),
        endpoint(
            "/meshes/{mesh}/{collection}/{name}",
            Method::GET,
            get_resource,
        ),
        endpoint(
            "/meshes/{mesh}/{collection}/{name}",
            Method::PUT,
            put_resource,
        ),
        endpoint(
            "/meshes/{mesh}/{collection}/{name}",
            Method::DELETE,
            delete_resource,
        ),
        endpoint(
            "/meshes/{mesh}/{collection}/{name}/_resources/dataplanes",
            Method::GET,
            selection,
        ),
        endpoint(
            "/meshes/{mesh}/{collection}/{name}/limits",
            Method::GET,
            dataplane_limits,
        ),
        endpoint(
            "/meshes/{mesh}/{collection}/{name}/status",
            Method::POST,
            dataplane_status,
        ),
        endpoint("/apply", Method::POST, apply),
        endpoint("/status", Method::GET, status),
        endpoint("/kernel-limits", Method::GET, kernel_limits),
        endpoint("/kernel-agents/{name}/status", Method::POST, agent_status),
        endpoint("/xds", Method::GET, xds_status),
        endpoint("/{collection}", Method::GET, list_all),
    ]
}

fn endpoint<H, T>(
    path: &'static str,
    method: Method,
    handler: H,
) -> (&'static str, Method, MethodRouter<AppState>)
where
    H: Handler<T, AppState>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone())
        .unwrap_or_else(|_| panic!("{method} {path}: not a method axum can route"));
    (path, method, on(filter, handler))
}

/// The operators' routes, which the all-in-one serves on its admin routes instead.
const OPS_PATHS: [&str; 2] = ["/ready", "/metrics"];

/// Every `(method, path)` the API serves, paths in axum's `{param}` syntax (OpenAPI's too).
pub fn routes() -> Vec<(Method, &'static str)> {
    endpoints()
        .into_iter()
        .map(|(path, method, _)| (method, path))
        .collect()
}

/// The whole API as an axum router.
pub fn router(cp: ControlPlane, config: ApiConfig) -> Router {
    let state = AppState { cp, config };
    let mut by_path: Vec<(&'static str, MethodRouter<AppState>)> = Vec::new();
    for (path, _, handler) in endpoints() {
        if OPS_PATHS.contains(&path) && !state.config.serve_ops {
            continue;
        }
        match by_path.iter_mut().find(|(p, _)| *p == path) {
            Some((_, methods)) => *methods = std::mem::take(methods).merge(handler),
            None => by_path.push((path, handler)),
        }
    }
    by_path
        .into_iter()
        .fold(Router::new(), |router, (path, methods)| {
            router.route(path, methods)
        })
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

/// Every way a request fails, before it becomes a response in [`error_response`].
#[derive(Debug)]
pub(crate) enum ApiError {
    Cp(CpError),
    BadRequest(String),
    NotFound(String),
    Unauthorized,
    TooLarge(usize),
    UnsupportedMediaType(String),
}

impl From<CpError> for ApiError {
    fn from(e: CpError) -> Self {
        ApiError::Cp(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error_response(self)
    }
}

/// The one edge function from errors to statuses.
fn error_response(error: ApiError) -> Response {
    let (status, title, detail, problems) = match error {
        ApiError::Cp(CpError::Invalid(problems)) => (
            StatusCode::BAD_REQUEST,
            "Invalid resources",
            format!("{} problem(s); nothing was changed", problems.len()),
            problems,
        ),
        ApiError::Cp(e @ CpError::NotFound { .. }) => {
            (StatusCode::NOT_FOUND, "Not found", e.to_string(), vec![])
        }
        ApiError::Cp(CpError::Conflict(conflict)) => (
            StatusCode::CONFLICT,
            "Conflict",
            conflict.to_string(),
            vec![],
        ),
        ApiError::Cp(CpError::Store(e)) if e.is_unavailable() => {
            tracing::error!("write refused: {e}");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "Store unavailable",
                format!(
                    "{e}; nothing was changed. Fix the cause (e.g. free space on the store's \
                     disk) and retry: the next write reopens the store"
                ),
                vec![],
            )
        }
        ApiError::Cp(e @ (CpError::Store(_) | CpError::Canonical(_) | CpError::Internal(_))) => {
            tracing::error!("request failed: {e}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal error",
                format!("{e}; nothing was changed"),
                vec![],
            )
        }
        ApiError::BadRequest(detail) => (StatusCode::BAD_REQUEST, "Bad request", detail, vec![]),
        ApiError::NotFound(detail) => (StatusCode::NOT_FOUND, "Not found", detail, vec![]),
        ApiError::Unauthorized => (
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "this control plane requires `Authorization: Bearer <token>` \
             (meshlimit --token or MESHLIMIT_TOKEN)"
                .to_string(),
            vec![],
        ),
        ApiError::TooLarge(limit) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "Payload too large",
            format!("request bodies are limited to {limit} bytes"),
            vec![],
        ),
        ApiError::UnsupportedMediaType(detail) => (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported media type",
            detail,
            vec![],
        ),
    };
    let body = ErrorBody {
        status: status.as_u16(),
        title: title.to_string(),
        detail,
        invalid_parameters: problems.iter().map(invalid_parameter).collect(),
    };
    let mut response = (status, axum::Json(body)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

fn invalid_parameter(p: &Problem) -> InvalidParameter {
    InvalidParameter {
        field: p.path.clone(),
        reason: p.message.clone(),
        file: p.file.clone(),
        document: p.document,
        kind: p.kind.clone(),
        name: p.name.clone(),
        message: p.to_string(),
    }
}

async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.config.token {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token);
        if !presented.is_some_and(|p| constant_time_eq(p.as_bytes(), token.as_bytes())) {
            return error_response(ApiError::Unauthorized);
        }
    }
    next.run(request).await
}

/// Counts every answer by method, route template and status class.
async fn count(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    state
        .config
        .metrics
        .request(&method, &route, response.status().as_u16());
    response
}

/// The token of `Bearer <token>`; the scheme is case-insensitive (RFC 9110, section 11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Compares without an early exit, so the time taken does not reveal a matching prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found(request: Request) -> ApiError {
    ApiError::NotFound(format!(
        "no route for {} {}",
        request.method(),
        request.uri().path()
    ))
}

/// `Query`, with a malformed query string answered like every other 400 (problem JSON) rather
/// than axum's plain-text rejection.
struct ApiQuery<T>(T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(query)) => Ok(ApiQuery(query)),
            Err(rejection) => Err(ApiError::BadRequest(format!(
                "the query string {:?} is invalid: {}",
                parts.uri.query().unwrap_or(""),
                rejection.body_text()
            ))),
        }
    }
}

/// `Path`, with a path parameter that does not decode answered as problem JSON too.
struct ApiPath<T>(T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(path)) => Ok(ApiPath(path)),
            Err(rejection) => Err(ApiError::BadRequest(format!(
                "the path {:?} is invalid: {}",
                parts.uri.path(),
                rejection.body_text()
            ))),
        }
    }
}

/// Reads a body up to the configured limit.
async fn read_body(state: &AppState, body: Body) -> Result<Bytes, ApiError> {
    let limit = state.config.max_body_bytes;
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::TooLarge(limit)),
        Err(e) => Err(ApiError::BadRequest(format!(
            "could not read the body: {e}"
        ))),
    }
}

fn body_text(bytes: &Bytes) -> Result<&str, ApiError> {
    std::str::from_utf8(bytes).map_err(|_| ApiError::BadRequest("the body is not UTF-8".into()))
}

fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn is_json(media: &str) -> bool {
    media.starts_with("application/json") || media.contains("+json")
}

fn is_yaml(media: &str) -> bool {
    media.contains("yaml")
}

/// Resource bodies: YAML or JSON (JSON is read by the same YAML parser, so both give the same
/// field-path errors).
fn check_resource_media(headers: &HeaderMap) -> Result<(), ApiError> {
    let media = content_type(headers);
    if media.is_empty() || is_json(media) || is_yaml(media) || media.starts_with("text/plain") {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "{media:?}: send application/json or application/yaml"
        )))
    }
}

/// Renders a body as YAML when the client asked for it (`Accept: application/yaml`), else JSON.
fn render<T: Serialize>(headers: &HeaderMap, status: StatusCode, value: &T) -> Response {
    let wants_yaml = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_yaml);
    let rendered = if wants_yaml {
        serde_yaml_ng::to_string(value)
            .map(|text| (text, "application/yaml"))
            .map_err(|e| e.to_string())
    } else {
        serde_json::to_string(value)
            .map(|text| (text, "application/json"))
            .map_err(|e| e.to_string())
    };
    match rendered {
        Ok((text, media)) => (status, [(header::CONTENT_TYPE, media)], text).into_response(),
        Err(e) => error_response(ApiError::Cp(CpError::Internal(e))),
    }
}

fn collection_kind(collection: &str) -> Result<Kind, ApiError> {
    model::kind_of_collection(collection).ok_or_else(|| {
        ApiError::NotFound(format!(
            "unknown collection {collection:?}: use meshratelimits, ratelimits or dataplanes"
        ))
    })
}

/// `If-Match: "<version>"` (or a bare number) makes a write conditional.
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("").trim().trim_matches('"');
    text.parse()
        .map(Some)
        .map_err(|_| ApiError::BadRequest(format!("If-Match: {text:?} is not a resource version")))
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    size: Option<usize>,
    offset: Option<usize>,
}

const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 1000;

/// `(size, offset)` of a page query, the size within bounds.
fn page_bounds(query: &PageQuery) -> Result<(usize, usize), ApiError> {
    let size = query.size.unwrap_or(DEFAULT_PAGE_SIZE);
    if size == 0 || size > MAX_PAGE_SIZE {
        return Err(ApiError::BadRequest(format!(
            "size must be between 1 and {MAX_PAGE_SIZE}"
        )));
    }
    Ok((size, query.offset.unwrap_or(0)))
}

fn page<'a>(
    path: &str,
    query: &PageQuery,
    items: Vec<&'a Resource>,
) -> Result<Page<&'a Resource>, ApiError> {
    let (size, offset) = page_bounds(query)?;
    let total = items.len();
    let end = offset.saturating_add(size).min(total);
    let next = (end < total).then(|| format!("{path}?offset={end}&size={size}"));
    Ok(Page {
        total,
        items: items.into_iter().skip(offset).take(size).collect(),
        next,
    })
}

fn with_version(mut response: Response, version: u64) -> Response {
    if let Ok(value) = HeaderValue::from_str(&format!("\"{version}\"")) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    product: &'static str,
    version: &'static str,
    store_version: u64,
    store: StoreCondition,
}

async fn index(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let index = Index {
        product: "meshlimit",
        version: env!("CARGO_PKG_VERSION"),
        store_version: state.cp.snapshot().version,
        store: state.cp.store_condition(),
    };
    render(&headers, StatusCode::OK, &index)
}

/// `200 ready`, or `503` with the reason while the store refuses writes.
async fn ready(State(state): State<AppState>) -> Response {
    let text = |status: StatusCode, body: String| {
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            body,
        )
            .into_response()
    };
    match state.cp.ready() {
        Ok(()) => text(StatusCode::OK, "ready\n".to_string()),
        Err(reason) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready:\n{reason}\n"),
        ),
    }
}

/// Every series of [`Metrics::render`]: Prometheus text, or OpenMetrics when the scraper asks.
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let format = Format::from_accept(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let body = state
        .config
        .metrics
        .render(&state.cp, state.config.xds.as_ref(), format);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, format.content_type())],
        body,
    )
        .into_response()
}

async fn list_meshes(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Response, ApiError> {
    let snapshot = state.cp.snapshot();
    let implicit = implicit_default_mesh();
    let mut items: Vec<&Resource> = snapshot
        .list(Kind::Mesh, None)
        .into_iter()
        .map(|e| &e.resource)
        .collect();
    if !items.iter().any(|r| r.name() == "default")
        && let Some(default) = &implicit
    {
        items.push(default);
    }
    items.sort_by(|a, b| a.name().cmp(b.name()));
    let page = page("/meshes", &query, items)?;
    Ok(render(&headers, StatusCode::OK, &page))
}

/// The `default` mesh exists without a resource; listings show it as one.
fn implicit_default_mesh() -> Option<Resource> {
    model::parse_one("implicit", "type: Mesh\nname: default\n").ok()
}

async fn get_mesh(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(mesh): ApiPath<String>,
) -> Result<Response, ApiError> {
    let snapshot = state.cp.snapshot();
    if let Some(entry) = snapshot.get(Kind::Mesh, "", &mesh) {
        return Ok(with_version(
            render(&headers, StatusCode::OK, &entry.resource),
            entry.version,
        ));
    }
    match (mesh.as_str(), implicit_default_mesh()) {
        ("default", Some(default)) => Ok(render(&headers, StatusCode::OK, &default)),
        _ => Err(CpError::NotFound {
            kind: Kind::Mesh,
            mesh: String::new(),
            name: mesh,
        }
        .into()),
    }
}

async fn put_mesh(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(mesh): ApiPath<String>,
    body: Body,
) -> Result<Response, ApiError> {
    write_one(state, headers, Kind::Mesh, String::new(), mesh, body).await
}

async fn delete_mesh(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(mesh): ApiPath<String>,
) -> Result<Response, ApiError> {
    delete_one(state, headers, Kind::Mesh, String::new(), mesh).await
}

async fn list_in_mesh(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath((mesh, collection)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Response, ApiError> {
    let kind = collection_kind(&collection)?;
    let snapshot = state.cp.snapshot();
    // As Kuma does: a mesh that does not exist has no resources to list, it is not found.
    if !snapshot.mesh_names().contains(&mesh) {
        return Err(CpError::NotFound {
            kind: Kind::Mesh,
            mesh: String::new(),
            name: mesh,
        }
        .into());
    }
    let items = snapshot
        .list(kind, Some(&mesh))
        .into_iter()
        .map(|e| &e.resource)
        .collect();
    let page = page(&format!("/meshes/{mesh}/{collection}"), &query, items)?;
    Ok(render(&headers, StatusCode::OK, &page))
}

async fn list_all(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(collection): ApiPath<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Response, ApiError> {
    let kind = collection_kind(&collection)?;
    let snapshot = state.cp.snapshot();
    let items = snapshot
        .list(kind, None)
        .into_iter()
        .map(|e| &e.resource)
        .collect();
    let page = page(&format!("/{collection}"), &query, items)?;
    Ok(render(&headers, StatusCode::OK, &page))
}

/// The stored resource, or the 404 that names it.
fn stored<'a>(
    snapshot: &'a StoreState,
    kind: Kind,
    mesh: &str,
    name: &str,
) -> Result<&'a Entry, ApiError> {
    snapshot.get(kind, mesh, name).ok_or_else(|| {
        CpError::NotFound {
            kind,
            mesh: mesh.into(),
            name: name.into(),
        }
        .into()
    })
}

async fn get_resource(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath((mesh, collection, name)): ApiPath<(String, String, String)>,
) -> Result<Response, ApiError> {
    let kind = collection_kind(&collection)?;
    let snapshot = state.cp.snapshot();
    let entry = stored(&snapshot, kind, &mesh, &name)?;
    Ok(with_version(
        render(&headers, StatusCode::OK, &entry.resource),
        entry.version,
    ))
}

async fn put_resource(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath((mesh, collection, name)): ApiPath<(String, String, String)>,
    body: Body,
) -> Result<Response, ApiError> {
    let kind = collection_kind(&collection)?;
    write_one(state, headers, kind, mesh, name, body).await
}

async fn delete_resource(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath((mesh, collection, name)): ApiPath<(String, String, String)>,
) -> Result<Response, ApiError> {
    let kind = collection_kind(&collection)?;
    delete_one(state, headers, kind, mesh, name).await
}

async fn write_one(
    state: AppState,
    headers: HeaderMap,
    kind: Kind,
    mesh: String,
    name: String,
    body: Body,
) -> Result<Response, ApiError> {
    check_resource_media(&headers)?;
    let expected = if_match(&headers)?;
    let bytes = read_body(&state, body).await?;
    let text = body_text(&bytes)?.to_string();
    let cp = state.cp.clone();
    let result = blocking(move || cp.put(kind, &mesh, &name, &text, expected)).await?;
    let created = result
        .results
        .iter()
        .any(|r| r.action == crate::wire::Action::Created);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let version = result.version;
    Ok(with_version(render(&headers, status, &result), version))
}

async fn delete_one(
    state: AppState,
    headers: HeaderMap,
    kind: Kind,
    mesh: String,
    name: String,
) -> Result<Response, ApiError> {
    let expected = if_match(&headers)?;
    let cp = state.cp.clone();
    let result = blocking(move || cp.delete(kind, &mesh, &name, expected)).await?;
    Ok(render(&headers, StatusCode::OK, &result))
}

/// Store commits wait for the disk; keep them off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, CpError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::Cp(CpError::Internal(format!("write task failed: {e}"))))?
        .map_err(ApiError::Cp)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApplyQuery {
    #[serde(default)]
    dry_run: bool,
    /// Names the body in problems (`<file>: document <n> ...`) when it is YAML.
    file: Option<String>,
}

/// `POST /apply`: all documents or none. `application/json` carries an [`ApplyRequest`] (several
/// named files); a YAML body is one multi-document file.
async fn apply(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<ApplyQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    let media = content_type(&headers).to_string();
    let bytes = read_body(&state, body).await?;
    let request = if is_json(&media) {
        serde_json::from_slice::<ApplyRequest>(&bytes).map_err(|e| {
            ApiError::BadRequest(format!(
                "an application/json apply is {{\"files\": [{{\"name\", \"content\"}}], \"dryRun\"}}: {e}"
            ))
        })?
    } else if media.is_empty() || is_yaml(&media) || media.starts_with("text/plain") {
        ApplyRequest {
            files: vec![SourceFile {
                name: query.file.clone().unwrap_or_else(|| "request".to_string()),
                content: body_text(&bytes)?.to_string(),
            }],
            dry_run: query.dry_run,
        }
    } else {
        return Err(ApiError::UnsupportedMediaType(format!(
            "{media:?}: send application/yaml (documents) or application/json (files)"
        )));
    };
    let dry_run = request.dry_run || query.dry_run;
    let cp = state.cp.clone();
    let result = blocking(move || cp.apply(&request.files, dry_run)).await?;
    Ok(render(&headers, StatusCode::OK, &result))
}

/// What a policy selects: the dataplanes whose inbounds it contributed to, or (for a
/// `RateLimit`) its kernel destinations; a Dataplane selects itself.
async fn selection(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath((mesh, collection, name)): ApiPath<(String, String, String)>,
) -> Result<Response, ApiError> {
    let kind = collection_kind(&collection)?;
    let snapshot = state.cp.snapshot();
    let entry = stored(&snapshot, kind, &mesh, &name)?;
    let (dataplanes, kernel) = crate::select::selected(&snapshot, &entry.resource);
    let selection = Selection {
        version: snapshot.version,
        dataplanes,
        kernel,
    };
    Ok(render(&headers, StatusCode::OK, &selection))
}

#[derive(Debug, Deserialize)]
struct WatchQuery {
    #[serde(default)]
    watch: bool,
    /// The kernel agent's name (for `/status`).
    agent: Option<String>,
}

async fn dataplane_limits(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath((mesh, collection, name)): ApiPath<(String, String, String)>,
    ApiQuery(query): ApiQuery<WatchQuery>,
) -> Result<Response, ApiError> {
    if collection_kind(&collection)? != Kind::Dataplane {
        return Err(ApiError::NotFound(format!(
            "limits are served for dataplanes, not {collection}"
        )));
    }
    if query.watch {
        return Ok(stream::dataplane(
            &state.cp,
            state.config.heartbeat,
            mesh,
            name,
        ));
    }
    let snapshot = state.cp.snapshot();
    let limits = snapshot
        .effective(&mesh, &name)
        .cloned()
        .ok_or_else(|| CpError::NotFound {
            kind: Kind::Dataplane,
            mesh: mesh.clone(),
            name: name.clone(),
        })?;
    let event: DataplaneEvent = StreamEvent::Limits {
        version: snapshot.version,
        limits: Some(limits),
    };
    Ok(render(&headers, StatusCode::OK, &event))
}

async fn kernel_limits(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<WatchQuery>,
) -> Response {
    if query.watch {
        return stream::kernel(&state.cp, state.config.heartbeat, query.agent);
    }
    let snapshot = state.cp.snapshot();
    let event: KernelEvent = StreamEvent::Limits {
        version: snapshot.version,
        limits: Some(snapshot.kernel.clone()),
    };
    render(&headers, StatusCode::OK, &event)
}

async fn dataplane_status(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath((mesh, collection, name)): ApiPath<(String, String, String)>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    if collection_kind(&collection)? != Kind::Dataplane {
        return Err(ApiError::NotFound(format!(
            "status is reported by dataplanes, not {collection}"
        )));
    }
    let report: DataplaneReport = json_body(&state, &headers, body).await?;
    state.cp.insights().report_dataplane(&mesh, &name, &report);
    Ok(StatusCode::NO_CONTENT)
}

async fn agent_status(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let report: AgentReport = json_body(&state, &headers, body).await?;
    state.cp.insights().report_agent(&name, &report);
    Ok(StatusCode::NO_CONTENT)
}

async fn json_body<T: serde::de::DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    let media = content_type(headers);
    if !media.is_empty() && !is_json(media) {
        return Err(ApiError::UnsupportedMediaType(format!(
            "{media:?}: send application/json"
        )));
    }
    let bytes = read_body(state, body).await?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::BadRequest(format!("invalid body: {e}")))
}

/// `GET /xds`: one page of the nodes (the body deserializes as a [`meshlimit_xds::XdsStatus`],
/// and an unpaged one is exactly that), with the next page's URL, Kuma-style.
#[derive(Serialize)]
struct XdsPage {
    nodes: Vec<meshlimit_xds::NodeStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

/// The xDS server's nodes, versions and rejections, paginated (`size`, `offset`); 404 when this
/// process serves no xDS.
async fn xds_status(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Response, ApiError> {
    let Some(xds) = &state.config.xds else {
        return Err(ApiError::NotFound(
            "xDS is not served: start the control plane with --xds".into(),
        ));
    };
    let nodes = xds.status();
    let (size, offset) = page_bounds(&query)?;
    let total = nodes.len();
    let end = offset.saturating_add(size).min(total);
    let next = (end < total).then(|| format!("/xds?offset={end}&size={size}"));
    let page = XdsPage {
        nodes: nodes.into_iter().skip(offset).take(size).collect(),
        next,
    };
    Ok(render(&headers, StatusCode::OK, &page))
}

async fn status(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let snapshot = state.cp.snapshot();
    let mut status = state.cp.insights().status(&snapshot);
    status.store = state.cp.store_condition();
    render(&headers, StatusCode::OK, &status)
}
