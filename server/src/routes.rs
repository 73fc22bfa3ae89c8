//! The routes: `POST /v1/chat/completions`, `POST /v1/completions`
//! (whole or streamed as server-sent events ending with `[DONE]`),
//! `GET /v1/models`, `GET /health`, `GET /metrics`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::stream;
use hetero_core::Error;
use hetero_models::{GenerateOptions, SamplingParams};
use hetero_scheduler::live::{Engine, Event, LiveRequest, Outcome, Rejected};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::api::{self, ApiError, CompletionRequest, Input};
use crate::prompt::Prompter;
use crate::responses::{self, Meta, Route};

/// Everything the handlers share.
#[derive(Debug)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub prompter: Prompter,
    /// The model's id in requests and `/v1/models`.
    pub model_id: String,
    /// `max_tokens` when a request gives none (capped by what fits).
    pub default_max_tokens: usize,
    /// When the server started (Unix seconds).
    pub created: u64,
    next_id: AtomicU64,
}

impl AppState {
    pub fn new(
        engine: Arc<Engine>,
        prompter: Prompter,
        model_id: String,
        default_max_tokens: usize,
    ) -> Self {
        AppState {
            engine,
            prompter,
            model_id,
            default_max_tokens: default_max_tokens.max(1),
            created: unix_now(),
            next_id: AtomicU64::new(0),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The server's routes over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.to_json())).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: "no such route; this server has POST /v1/chat/completions, POST /v1/completions, \
                  GET /v1/models, GET /health and GET /metrics"
            .into(),
        kind: "invalid_request_error",
        param: None,
        code: Some("unknown_url"),
    }
}

async fn models(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    axum::Json(responses::models(&s.model_id, s.created))
}

async fn health(State(s): State<Arc<AppState>>) -> Response {
    if s.engine.is_closing() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "shutting_down"})),
        )
            .into_response()
    } else {
        axum::Json(json!({"status": "ok"})).into_response()
    }
}

async fn metrics(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        s.engine.metrics().render(),
    )
}

async fn chat_completions(State(s): State<Arc<AppState>>, body: Bytes) -> Response {
    answer(&s, complete(&s, &body, Route::Chat).await)
}

async fn completions(State(s): State<Arc<AppState>>, body: Bytes) -> Response {
    answer(&s, complete(&s, &body, Route::Completion).await)
}

/// The response; a 400 refused here (before the engine saw the request)
/// is counted as invalid.
fn answer(s: &AppState, result: Result<Response, Refusal>) -> Response {
    match result {
        Ok(r) => r,
        Err(Refusal::Here(e)) => {
            s.engine.metrics().outcome(Outcome::Invalid);
            e.into_response()
        }
        Err(Refusal::ByEngine(e)) => e.into_response(),
    }
}

/// Who refused a request: the HTTP layer, or the engine (which counted it).
enum Refusal {
    Here(ApiError),
    ByEngine(ApiError),
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Self {
        Refusal::Here(e)
    }
}

/// The field an engine refusal names, in the request's terms.
fn engine_error(e: Error, route: Route) -> ApiError {
    match e {
        Error::InvalidInput { field, reason } => {
            let param = match (field.as_str(), route) {
                ("prompt", Route::Chat) => "messages",
                (f, _) => f,
            };
            ApiError::invalid(param, reason)
        }
        other => ApiError::body(other.to_string()),
    }
}

async fn complete(s: &AppState, body: &[u8], route: Route) -> Result<Response, Refusal> {
    let request = api::parse(body, route == Route::Chat)?;
    if let Some(m) = &request.model
        && *m != s.model_id
    {
        return Err(ApiError::invalid(
            "model",
            format!(
                "model {m:?} is not served here; this server serves {:?} (see GET /v1/models)",
                s.model_id
            ),
        )
        .with_code("model_not_found")
        .into());
    }
    let prompt_ids = s.prompter.ids(s.engine.tokenizer(), &request.input)?;
    let live = live_request(s, &request, prompt_ids)?;
    let events = s.engine.submit(live).map_err(|r| {
        Refusal::ByEngine(match r {
            Rejected::QueueFull { .. } => ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                message: r.to_string(),
                kind: "rate_limit_error",
                param: None,
                code: Some("queue_full"),
            },
            Rejected::Closed => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: r.to_string(),
                kind: "server_error",
                param: None,
                code: Some("shutting_down"),
            },
            Rejected::Invalid(e) => engine_error(e, route),
        })
    })?;
    let meta = Meta {
        route,
        id: format!(
            "{}-{}",
            match route {
                Route::Chat => "chatcmpl",
                Route::Completion => "cmpl",
            },
            s.next_id.fetch_add(1, Ordering::Relaxed)
        ),
        created: unix_now(),
        model: s.model_id.clone(),
    };
    if request.stream {
        Ok(stream_response(meta, events, request.include_usage))
    } else {
        whole_response(meta, events)
            .await
            .map_err(Refusal::ByEngine)
    }
}

fn live_request(
    s: &AppState,
    r: &CompletionRequest,
    prompt_ids: Vec<u32>,
) -> Result<LiveRequest, ApiError> {
    let longest = s.engine.longest_request();
    let room = longest.saturating_sub(prompt_ids.len());
    if room == 0 {
        let param = match r.input {
            Input::Chat(_) => "messages",
            Input::Text(_) => "prompt",
        };
        return Err(ApiError::invalid(
            param,
            format!(
                "the prompt is {} tokens; this server runs at most {longest} positions per \
                 request (prompt + max_tokens)",
                prompt_ids.len(),
            ),
        )
        .with_code("context_length_exceeded"));
    }
    let max_tokens = r.max_tokens.unwrap_or(s.default_max_tokens.min(room));
    // Without a seed, each request draws its own.
    let seed = r.seed.unwrap_or_else(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        nanos ^ s.next_id.load(Ordering::Relaxed).rotate_left(32)
    });
    Ok(LiveRequest {
        prompt_ids,
        options: GenerateOptions {
            max_tokens,
            sampling: SamplingParams {
                temperature: r.temperature,
                top_k: 0,
                top_p: r.top_p,
                seed,
            },
            stop: r.stop.clone(),
            stop_ids: s.prompter.stop_ids().to_vec(),
        },
    })
}

/// Wait for the whole text.
async fn whole_response(
    meta: Meta,
    mut events: UnboundedReceiver<Event>,
) -> Result<Response, ApiError> {
    let mut text = String::new();
    while let Some(event) = events.recv().await {
        match event {
            Event::Text(t) => text.push_str(&t),
            Event::Done { reason, usage, .. } => {
                return Ok(
                    axum::Json(responses::completion(&meta, &text, &reason, &usage))
                        .into_response(),
                );
            }
            Event::Failed(message) => return Err(failed(message)),
        }
    }
    Err(failed(
        "the engine stopped before the request finished".into(),
    ))
}

fn failed(message: String) -> ApiError {
    ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message,
        kind: "server_error",
        param: None,
        code: None,
    }
}

/// Server-sent events: a first chunk (chat: the assistant's role), a
/// chunk per piece of text, a last chunk with the finish reason and the
/// usage, the usage chunk when asked for, then `[DONE]`. A failure
/// becomes an `error` object before `[DONE]`. Dropping the stream (the
/// client went away) drops the receiver, which cancels the request.
fn stream_response(meta: Meta, events: UnboundedReceiver<Event>, include_usage: bool) -> Response {
    let mut queued = VecDeque::new();
    if meta.route == Route::Chat {
        queued.push_back(responses::chunk(&meta, true, Some(""), None, None).to_string());
    }
    let state = (Some(events), queued, meta);
    let body = stream::unfold(state, move |(mut events, mut queued, meta)| async move {
        loop {
            if let Some(data) = queued.pop_front() {
                let event = SseEvent::default().data(data);
                return Some((Ok::<_, Infallible>(event), (events, queued, meta)));
            }
            let rx = events.as_mut()?;
            match rx.recv().await {
                Some(Event::Text(t)) => queued
                    .push_back(responses::chunk(&meta, false, Some(&t), None, None).to_string()),
                Some(Event::Done { reason, usage, .. }) => {
                    let text = (meta.route == Route::Completion).then_some("");
                    queued.push_back(
                        responses::chunk(&meta, false, text, Some(&reason), Some(&usage))
                            .to_string(),
                    );
                    if include_usage {
                        queued.push_back(responses::usage_chunk(&meta, &usage).to_string());
                    }
                    queued.push_back("[DONE]".into());
                    events = None;
                }
                Some(Event::Failed(message)) => {
                    queued.push_back(error_data(message));
                    queued.push_back("[DONE]".into());
                    events = None;
                }
                None => {
                    queued.push_back(error_data(
                        "the engine stopped before the request finished".into(),
                    ));
                    queued.push_back("[DONE]".into());
                    events = None;
                }
            }
        }
    });
    Sse::new(body).into_response()
}

fn error_data(message: String) -> String {
    let v: Value = failed(message).to_json();
    v.to_string()
}
