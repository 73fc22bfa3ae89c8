//! A load benchmark for OpenAI-compatible servers: `streams` clients at
//! once, each sending streamed chat requests back to back, and what that
//! gives: generated tokens per second over the run, time to first token
//! (p50, p99), statuses. The same run against two servers (this one and
//! llama.cpp's `llama-server`) compares them on equal terms: same prompts,
//! same `max_tokens`, greedy, one connection per request.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use crate::client;

/// What to send.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub addr: SocketAddr,
    /// The `model` field (None: left out).
    pub model: Option<String>,
    /// User messages, cycled over the requests.
    pub prompts: Vec<String>,
    /// Clients sending at once.
    pub streams: usize,
    /// Requests each client sends, one after the other.
    pub requests_per_stream: usize,
    pub max_tokens: usize,
    pub timeout: Duration,
}

/// One request's measurements.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestOutcome {
    pub status: u16,
    /// From sending to the first chunk with text.
    pub ttft_s: Option<f64>,
    pub total_s: f64,
    /// Completion tokens (the server's usage, or the chunks with text).
    pub tokens: usize,
    pub text: String,
    pub error: Option<String>,
}

/// The whole run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadReport {
    pub streams: usize,
    pub requests: usize,
    pub ok: usize,
    /// Responses by status (0: no response: connection error).
    pub statuses: BTreeMap<u16, usize>,
    pub generated_tokens: usize,
    pub wall_s: f64,
    pub tokens_per_s: f64,
    pub ttft_p50_s: f64,
    pub ttft_p99_s: f64,
    /// Mean seconds per generated token after the first, per request.
    pub mean_inter_token_s: f64,
    pub first_error: Option<String>,
}

/// The `q` quantile (nearest rank) of `v`; 0 for none.
pub fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Send one streamed chat request and measure it.
pub fn one_request(spec: &LoadSpec, prompt: &str) -> RequestOutcome {
    let mut body = json!({
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": spec.max_tokens,
        "temperature": 0,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if let Some(m) = &spec.model {
        body["model"] = m.clone().into();
    }
    let body = body.to_string();
    let started = Instant::now();
    let mut outcome = RequestOutcome {
        status: 0,
        ttft_s: None,
        total_s: 0.0,
        tokens: 0,
        text: String::new(),
        error: None,
    };
    let result = (|| -> std::io::Result<()> {
        let open = client::open(
            spec.addr,
            "POST",
            "/v1/chat/completions",
            Some(body.as_bytes()),
            spec.timeout,
        )?;
        outcome.status = open.status;
        if open.status != 200 {
            let r = open.read_all()?;
            outcome.error = Some(String::from_utf8_lossy(&r.body).into_owned());
            return Ok(());
        }
        let mut chunks_with_text = 0;
        let mut usage_tokens = None;
        open.events(&mut |data| {
            if data == "[DONE]" {
                return false;
            }
            let Ok(v) = serde_json::from_str::<Value>(data) else {
                outcome.error = Some(format!("a chunk is not JSON: {data:?}"));
                return false;
            };
            if let Some(e) = v.get("error") {
                outcome.error = Some(e.to_string());
            }
            if let Some(n) = v
                .get("usage")
                .and_then(|u| u.get("completion_tokens"))
                .and_then(Value::as_u64)
            {
                usage_tokens = Some(n as usize);
            }
            let content = v["choices"][0]["delta"]["content"].as_str().unwrap_or("");
            if !content.is_empty() {
                if outcome.ttft_s.is_none() {
                    outcome.ttft_s = Some(started.elapsed().as_secs_f64());
                }
                chunks_with_text += 1;
                outcome.text.push_str(content);
            }
            true
        })?;
        outcome.tokens = usage_tokens.unwrap_or(chunks_with_text);
        Ok(())
    })();
    if let Err(e) = result {
        outcome.error = Some(e.to_string());
    }
    outcome.total_s = started.elapsed().as_secs_f64();
    outcome
}

/// Run the load and summarise it.
pub fn run(spec: &LoadSpec) -> (LoadReport, Vec<RequestOutcome>) {
    let started = Instant::now();
    let outcomes: Vec<RequestOutcome> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..spec.streams)
            .map(|i| {
                scope.spawn(move || {
                    (0..spec.requests_per_stream)
                        .map(|j| {
                            let n = spec.prompts.len().max(1);
                            let prompt = spec
                                .prompts
                                .get((i + j * spec.streams) % n)
                                .map_or("Hello", String::as_str);
                            one_request(spec, prompt)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let wall_s = started.elapsed().as_secs_f64();
    let mut statuses = BTreeMap::new();
    for o in &outcomes {
        *statuses.entry(o.status).or_insert(0) += 1;
    }
    let good: Vec<&RequestOutcome> = outcomes
        .iter()
        .filter(|o| o.status == 200 && o.error.is_none())
        .collect();
    let generated_tokens: usize = good.iter().map(|o| o.tokens).sum();
    let mut ttft: Vec<f64> = good.iter().filter_map(|o| o.ttft_s).collect();
    let itl: Vec<f64> = good
        .iter()
        .filter_map(|o| {
            let t = o.ttft_s?;
            (o.tokens > 1).then(|| (o.total_s - t) / (o.tokens - 1) as f64)
        })
        .collect();
    let report = LoadReport {
        streams: spec.streams,
        requests: outcomes.len(),
        ok: good.len(),
        statuses,
        generated_tokens,
        wall_s,
        tokens_per_s: if wall_s > 0.0 {
            generated_tokens as f64 / wall_s
        } else {
            0.0
        },
        ttft_p50_s: quantile(&mut ttft, 0.5),
        ttft_p99_s: quantile(&mut ttft, 0.99),
        mean_inter_token_s: if itl.is_empty() {
            0.0
        } else {
            itl.iter().sum::<f64>() / itl.len() as f64
        },
        first_error: outcomes.iter().find_map(|o| o.error.clone()),
    };
    (report, outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let mut v = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(quantile(&mut v, 0.5), 3.0);
        assert_eq!(quantile(&mut v, 0.99), 5.0);
        assert_eq!(quantile(&mut v, 0.0), 1.0);
        assert_eq!(quantile(&mut [], 0.5), 0.0);
    }
}
