//! Timing a model, or a part of one, on its device: what per-layer cost
//! profiles (placing layers on devices) are measured with.

use std::time::Instant;

use hetero_core::{Error, Result};

use super::forward::Micro;
use super::model::{KvCache, LlamaModel, Logits};

impl LlamaModel {
    /// Seconds of one call through this model or part: `batch` sequences
    /// with `new_tokens` each after `context` cached positions (best of
    /// `reps`, after a warm-up call). Token ids go in when it holds the
    /// embedding, synthetic hidden states otherwise (a layer's time does
    /// not depend on the values); what comes out (logits of each
    /// sequence's last row, or the hidden state) is read back to the host,
    /// as a pipeline stage's output is.
    pub fn time_call(
        &self,
        batch: usize,
        new_tokens: usize,
        context: usize,
        reps: usize,
    ) -> Result<f64> {
        let times = self.time_calls(batch, new_tokens, context, reps)?;
        Ok(times.into_iter().fold(f64::INFINITY, f64::min))
    }

    /// [`time_call`](Self::time_call)'s call, the median of `reps` timed
    /// calls instead of the best: what a sustained run of such calls
    /// takes per call on a machine that is not quiet (the best is the
    /// call that met no interference, which a long run does not get).
    pub fn time_call_median(
        &self,
        batch: usize,
        new_tokens: usize,
        context: usize,
        reps: usize,
    ) -> Result<f64> {
        let mut times = self.time_calls(batch, new_tokens, context, reps)?;
        times.sort_by(f64::total_cmp);
        let n = times.len();
        Ok(if n % 2 == 1 {
            times[n / 2]
        } else {
            (times[n / 2 - 1] + times[n / 2]) / 2.0
        })
    }

    /// Every one of [`time_call`](Self::time_call)'s `reps` timed calls'
    /// seconds.
    fn time_calls(
        &self,
        batch: usize,
        new_tokens: usize,
        context: usize,
        reps: usize,
    ) -> Result<Vec<f64>> {
        if batch == 0 || new_tokens == 0 {
            return Err(Error::invalid(
                "timed call",
                "needs at least one sequence and one new token",
            ));
        }
        let reps = reps.max(1);
        let mut caches = (0..batch)
            .map(|_| self.new_cache(context + new_tokens * (reps + 1)))
            .collect::<Result<Vec<KvCache>>>()?;
        if context > 0 {
            for c in caches.iter_mut() {
                self.call_synthetic(std::slice::from_mut(c), context)?;
            }
        }
        self.call_synthetic(&mut caches, new_tokens)?;
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps {
            let start = Instant::now();
            self.call_synthetic(&mut caches, new_tokens)?;
            times.push(start.elapsed().as_secs_f64());
        }
        Ok(times)
    }

    /// One call of `n` synthetic tokens per cache through every stage in turn.
    fn call_synthetic(&self, caches: &mut [KvCache], n: usize) -> Result<()> {
        let c = &self.config;
        let rows = caches.len() * n;
        let mut micro = Micro::of_rows(caches.iter().map(|cache| (cache, n)));
        micro.ids = (0..rows).map(|i| ((i * 7 + 1) % c.vocab) as u32).collect();
        let mut x = if self.embedding.is_some() {
            None
        } else {
            Some(
                (0..rows * c.hidden)
                    .map(|i| ((i * 37) % 101) as f32 / 101.0 - 0.5)
                    .collect(),
            )
        };
        {
            if caches.iter().any(|c| c.len + n > c.max_len) {
                return Err(Error::invalid("timed call", "cache too short"));
            }
            let mut kv = self.split_caches(caches.iter_mut(), std::iter::repeat(n));
            for (s, kv_s) in kv.iter_mut().enumerate() {
                x = Some(self.run_stage(s, &micro, x.take(), kv_s, Logits::Last)?);
            }
        }
        for cache in caches.iter_mut() {
            cache.len += n;
        }
        Ok(())
    }
}
