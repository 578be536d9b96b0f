//! Prometheus metrics: builds, steps, cache tiers, hashing, the watcher, the
//! build queue and the store, in the daemon's own registry. Served by the
//! `metrics` RPC (`memobuild-ctl metrics`) and, when configured, over HTTP at
//! `/metrics` by a small listener. Names and labels: docs/OBSERVABILITY.md.

use crate::Engine;
use parking_lot::Mutex;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use std::sync::Arc;
use std::time::Duration;

/// Cache tiers a step is looked up in, in order. `memory`: the no-op fast
/// path, the whole build answered from the project's warm state; `local`:
/// the step cache in the store; `remote`: a registry cache (`--cache-from`,
/// asked only when the build names one).
pub(crate) const TIERS: [&str; 3] = ["memory", "local", "remote"];

/// Build results, as the `result` label.
pub(crate) const RESULTS: [&str; 3] = ["success", "failed", "cancelled"];

/// How `-o` exports read blobs, as the `via` label: `fd` (handed over as
/// file descriptors), `rpc` (read through `read_blob` chunks).
pub(crate) const EXPORT_VIAS: [&str; 2] = ["fd", "rpc"];

/// Step durations: from a cache lookup (sub-millisecond) to long RUN steps.
const STEP_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0,
];

#[derive(Debug, thiserror::Error)]
#[error("metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

/// Every metric the daemon exports.
pub(crate) struct Metrics {
    registry: Registry,
    builds: IntCounterVec,
    builds_running: IntGauge,
    /// Builds waiting for a slot in the build queue (exec/queue.rs), set
    /// when the metrics are scraped.
    pub queue_depth: IntGauge,
    step_seconds: HistogramVec,
    cache_hits: IntCounterVec,
    cache_misses: IntCounterVec,
    hashed_bytes: IntCounter,
    step_snapshots: IntCounterVec,
    layers_in_background: IntCounter,
    layer_entries_resumed: IntCounter,
    watch_events: IntCounter,
    watch_rescans: IntCounter,
    blob_bytes: IntGauge,
    blobs: IntGauge,
    export_blobs: IntCounterVec,
    /// Scrapes bring the counters kept elsewhere up to date; one at a time,
    /// so two scrapes never add the same increase twice.
    scrape: Mutex<()>,
}

/// Values read from the engine at scrape time.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Sample {
    pub hashed_bytes: u64,
    pub watch_events: u64,
    pub watch_rescans: u64,
    pub blob_bytes: u64,
    pub blobs: u64,
    pub layer_entries_resumed: u64,
}

/// Decrements the running-builds gauge when the build ends, however it ends.
pub(crate) struct Running(IntGauge);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    pub(crate) fn new() -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let m = Metrics {
            builds: IntCounterVec::new(
                Opts::new("memobuild_builds_total", "Builds that ended, by result"),
                &["result"],
            )?,
            builds_running: IntGauge::new("memobuild_builds_running", "Builds running now")?,
            queue_depth: IntGauge::new(
                "memobuild_build_queue_depth",
                "Builds waiting in the build queue",
            )?,
            step_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "memobuild_step_duration_seconds",
                    "Time per build step, by instruction and whether it came from the cache",
                )
                .buckets(STEP_BUCKETS.to_vec()),
                &["instruction", "outcome"],
            )?,
            cache_hits: IntCounterVec::new(
                Opts::new(
                    "memobuild_cache_hits_total",
                    "Steps answered by a cache tier",
                ),
                &["tier"],
            )?,
            cache_misses: IntCounterVec::new(
                Opts::new(
                    "memobuild_cache_misses_total",
                    "Steps a cache tier could not answer",
                ),
                &["tier"],
            )?,
            step_snapshots: IntCounterVec::new(
                Opts::new(
                    "memobuild_step_snapshots_total",
                    "Layers made ready for RUN steps as containerd snapshots: written directly from a step's changes (whole, or as a delta on the step's previous result), or unpacked from the layer blob",
                ),
                &["how"],
            )?,
            layers_in_background: IntCounter::new(
                "memobuild_layers_in_background_total",
                "Layers whose blob was still being written when the RUN after them started on their snapshot",
            )?,
            layer_entries_resumed: IntCounter::new(
                "memobuild_layer_entries_resumed_total",
                "Layer entries taken, as written pieces, from the step's previous layer instead of being read, hashed and compressed again",
            )?,
            hashed_bytes: IntCounter::new(
                "memobuild_hashed_bytes_total",
                "Bytes of context files read for content hashing",
            )?,
            watch_events: IntCounter::new(
                "memobuild_watch_events_total",
                "File events the watcher received",
            )?,
            watch_rescans: IntCounter::new(
                "memobuild_watch_rescans_total",
                "Full rescans of watched trees (after lost events)",
            )?,
            blob_bytes: IntGauge::new(
                "memobuild_store_blob_bytes",
                "Bytes of blobs (layers, configs, manifests) in the store",
            )?,
            blobs: IntGauge::new("memobuild_store_blobs", "Blobs in the store")?,
            export_blobs: IntCounterVec::new(
                Opts::new(
                    "memobuild_export_blobs_total",
                    "Blobs clients read for -o exports, by how (file descriptor or RPC chunks)",
                ),
                &["via"],
            )?,
            registry,
            scrape: Mutex::new(()),
        };
        m.register()?;
        // Every label value exists from the start, so a dashboard sees 0, not nothing.
        for r in RESULTS {
            m.builds.with_label_values(&[r]);
        }
        for t in TIERS {
            m.cache_hits.with_label_values(&[t]);
            m.cache_misses.with_label_values(&[t]);
        }
        for v in EXPORT_VIAS {
            m.export_blobs.with_label_values(&[v]);
        }
        Ok(m)
    }

    fn register(&self) -> Result<(), MetricsError> {
        let r = &self.registry;
        r.register(Box::new(self.builds.clone()))?;
        r.register(Box::new(self.builds_running.clone()))?;
        r.register(Box::new(self.queue_depth.clone()))?;
        r.register(Box::new(self.step_seconds.clone()))?;
        r.register(Box::new(self.cache_hits.clone()))?;
        r.register(Box::new(self.cache_misses.clone()))?;
        r.register(Box::new(self.hashed_bytes.clone()))?;
        r.register(Box::new(self.step_snapshots.clone()))?;
        r.register(Box::new(self.layers_in_background.clone()))?;
        r.register(Box::new(self.layer_entries_resumed.clone()))?;
        r.register(Box::new(self.watch_events.clone()))?;
        r.register(Box::new(self.watch_rescans.clone()))?;
        r.register(Box::new(self.blob_bytes.clone()))?;
        r.register(Box::new(self.blobs.clone()))?;
        r.register(Box::new(self.export_blobs.clone()))?;
        Ok(())
    }

    /// A build started; it counts as running until the guard drops.
    pub(crate) fn build_running(&self) -> Running {
        self.builds_running.inc();
        Running(self.builds_running.clone())
    }

    /// A build ended with `result` (one of [`RESULTS`]).
    pub(crate) fn build_ended(&self, result: &str) {
        self.builds.with_label_values(&[result]).inc();
    }

    /// A step ended: `display` is the instruction as written (its keyword
    /// becomes the label), `cached` whether the cache answered it.
    pub(crate) fn step(&self, display: &str, cached: bool, took: Duration) {
        let outcome = if cached { "cached" } else { "executed" };
        self.step_seconds
            .with_label_values(&[&instruction_kind(display), outcome])
            .observe(took.as_secs_f64());
    }

    /// Step results made ready for RUN: `written` whole, written as a `delta`,
    /// or layers `unpacked`.
    pub(crate) fn snapshots(&self, how: &str, count: u64) {
        if count > 0 {
            self.step_snapshots.with_label_values(&[how]).inc_by(count);
        }
    }

    /// A RUN started while `count` layers below it were still being written.
    pub(crate) fn layers_in_background(&self, count: u64) {
        self.layers_in_background.inc_by(count);
    }

    /// A lookup in a cache tier (one of [`TIERS`]) for `steps` steps.
    pub(crate) fn cache(&self, tier: &str, hit: bool, steps: u64) {
        let counter = if hit {
            &self.cache_hits
        } else {
            &self.cache_misses
        };
        counter.with_label_values(&[tier]).inc_by(steps);
    }

    /// `blobs` blobs went to an exporting client `via` one of [`EXPORT_VIAS`].
    pub(crate) fn export_blobs(&self, via: &str, blobs: u64) {
        self.export_blobs.with_label_values(&[via]).inc_by(blobs);
    }

    /// The text exposition format, with the scrape-time values applied.
    pub(crate) fn render(&self, sample: Sample) -> Result<String, MetricsError> {
        let _one = self.scrape.lock();
        advance(&self.hashed_bytes, sample.hashed_bytes);
        advance(&self.watch_events, sample.watch_events);
        advance(&self.watch_rescans, sample.watch_rescans);
        advance(&self.layer_entries_resumed, sample.layer_entries_resumed);
        self.blob_bytes.set(sample.blob_bytes as i64);
        self.blobs.set(sample.blobs as i64);
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// Moves a counter up to a total counted elsewhere (never down: a total that
/// shrank, e.g. a forgotten tree's rescans, is not an un-happening).
fn advance(counter: &IntCounter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

/// The instruction keyword of a step as written, upper-cased: `COPY`, `RUN`...
pub(crate) fn instruction_kind(display: &str) -> String {
    let word = display.split_whitespace().next().unwrap_or("");
    // Keywords are letters; anything else is not a label value worth a series.
    if !word.is_empty() && word.chars().all(|c| c.is_ascii_alphabetic()) {
        word.to_ascii_uppercase()
    } else {
        "OTHER".into()
    }
}

/// Reads the engine's counters and the store's size (walks the blob
/// directory; off the async workers) and renders the metrics.
pub async fn scrape(engine: &Arc<Engine>) -> Result<String, MetricsError> {
    let e = engine.clone();
    let sample = tokio::task::spawn_blocking(move || {
        let health = e.watcher.health();
        let (blob_bytes, blobs) = blob_usage(&e.store.root().join("blobs"));
        Sample {
            hashed_bytes: e.hashes.bytes_hashed(),
            watch_events: health.events,
            watch_rescans: health.trees.iter().map(|t| t.rescans).sum(),
            blob_bytes,
            blobs,
            layer_entries_resumed: e.layer_writer.resumed_entries(),
        }
    })
    .await
    .unwrap_or_default();
    engine
        .metrics
        .queue_depth
        .set(engine.queued_builds() as i64);
    engine.metrics.render(sample)
}

/// Total bytes and count of the files under `dir`.
fn blob_usage(dir: &std::path::Path) -> (u64, u64) {
    let mut bytes = 0;
    let mut count = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => pending.push(entry.path()),
                Ok(m) => {
                    bytes += m.len();
                    count += 1;
                }
                Err(_) => {}
            }
        }
    }
    (bytes, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    #[test]
    fn counters_histograms_and_scrape_time_totals_render() {
        let m = Metrics::new().unwrap();
        m.build_ended("success");
        m.cache("local", true, 2);
        m.cache("memory", false, 1);
        m.step("copy a /b", false, Duration::from_millis(3));
        m.step("RUN true", true, Duration::from_micros(100));
        let running = m.build_running();
        let sample = Sample {
            hashed_bytes: 100,
            ..Sample::default()
        };
        let text = m.render(sample).unwrap();
        assert_eq!(
            value(&text, "memobuild_builds_total{result=\"success\"}"),
            1.0
        );
        assert_eq!(
            value(&text, "memobuild_builds_total{result=\"failed\"}"),
            0.0
        );
        assert_eq!(
            value(&text, "memobuild_cache_hits_total{tier=\"local\"}"),
            2.0
        );
        assert_eq!(
            value(&text, "memobuild_cache_misses_total{tier=\"remote\"}"),
            0.0
        );
        assert_eq!(
            value(
                &text,
                "memobuild_step_duration_seconds_count{instruction=\"COPY\",outcome=\"executed\"}"
            ),
            1.0
        );
        assert_eq!(value(&text, "memobuild_builds_running"), 1.0);
        assert_eq!(value(&text, "memobuild_hashed_bytes_total"), 100.0);
        drop(running);
        let text = m
            .render(Sample {
                hashed_bytes: 250,
                ..Sample::default()
            })
            .unwrap();
        assert_eq!(value(&text, "memobuild_hashed_bytes_total"), 250.0);
        assert_eq!(value(&text, "memobuild_builds_running"), 0.0);
    }

    #[test]
    fn instruction_kinds_are_keywords() {
        assert_eq!(instruction_kind("run echo hi"), "RUN");
        assert_eq!(instruction_kind("WORKDIR /app"), "WORKDIR");
        assert_eq!(instruction_kind("$(evil) x"), "OTHER");
    }
}
