//! hetero-server: an OpenAI-compatible HTTP server in front of the live
//! continuous-batching engine of `hetero-scheduler` ([`live`]).
//!
//! Routes ([`routes::router`]): `POST /v1/chat/completions` and
//! `POST /v1/completions`, whole or streamed as server-sent events in
//! OpenAI's chunk format ending with `data: [DONE]`; `GET /v1/models`,
//! `GET /health` and `GET /metrics` (Prometheus text). Request fields
//! honoured: `messages` / `prompt`, `max_tokens` (or
//! `max_completion_tokens`), `temperature`, `top_p`, `seed`, `stop`,
//! `stream`, `stream_options.include_usage`; every response carries
//! `usage`.
//!
//! Refusals are OpenAI error objects naming the field ([`api::ApiError`]):
//! 400 for a bad body, an unknown model or a prompt longer than the
//! context, 429 with `Retry-After` when the engine's wait queue is full,
//! 503 while shutting down. A client that disconnects drops its event
//! receiver, which frees its slot at the engine's next round.
//!
//! For tests and benchmarks of any OpenAI-compatible server: a small
//! loopback HTTP client with server-sent events ([`client`]) and a load
//! generator ([`load`]: concurrent streams, tokens/s, time to first token).
//!
//! What this crate must not do: compute. It parses, renders prompts,
//! submits to the engine and formats what comes back; where and how a
//! request runs is the engine's business (`hetero-scheduler`), and the
//! model's, `hetero-models`'.
//!
//! [`live`]: hetero_scheduler::live

pub mod api;
pub mod client;
pub mod load;
pub mod prompt;
pub mod responses;
pub mod routes;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use prompt::Prompter;
pub use routes::{AppState, router};

/// Serve `state` on `listener` until `shutdown` resolves. Then: new
/// requests are refused (503), the queued and running ones finish, and
/// if they have not after `grace` they are cancelled (streams end with an
/// error object and `[DONE]`); returns when every connection is closed
/// and the engine's workers have stopped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let engine = state.engine.clone();
    let closer = engine.clone();
    let app = router(state);
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        closer.close();
        let _ = closed_tx.send(());
    };
    // After the shutdown began, cancel what is still running once the
    // grace period is over.
    let canceller = engine.clone();
    let watchdog = tokio::spawn(async move {
        if closed_rx.await.is_ok() {
            tokio::time::sleep(grace).await;
            canceller.cancel();
        }
    });
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(signal)
        .await;
    watchdog.abort();
    engine.close();
    let joiner = engine.clone();
    let _ = tokio::task::spawn_blocking(move || joiner.join()).await;
    served
}

/// Resolves on the first SIGINT or SIGTERM (Ctrl-C elsewhere).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
