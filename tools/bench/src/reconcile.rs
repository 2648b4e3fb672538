//! Reconciliation's data core: N source against N destination `(id, version)` pairs spilled to
//! a local folder (`LocalSpill`), then the streaming merge and diff (`shared::setdiff`).
//!
//! IDs are numeric strings (`"1"`..), as at Planning Center, so bytewise order differs from
//! numeric order. Over a universe of IDs `1..=U` with `U = N × 101 / 100`, index `i % 101`
//! plants the differences: 0 only at the source, 1 only at the destination, 2 stale (newer at the
//! source), anything else equal; so each side holds N pairs (for N a multiple of 100) and 1% of
//! them differ each way, 1% stale. The source arrives in numeric order, as an API lists it, and
//! goes through `RunWriter` (sorted in memory; each run a merge input); the destination arrives
//! bytewise-sorted and is split into the 16 index shards (`shard_of`), each through its own
//! `SortedRunWriter` (order checked, no sort; run size / 16 each, so that the 16 buffers together
//! weigh what one source run does), each shard one chained merge input, as the Destination step
//! writes them.
//!
//! Each phase reports its CPU time (all threads, getrusage) and its own peak RSS (VmHWM, reset
//! through `/proc/self/clear_refs` before the phase where the kernel allows it). The phases run
//! on any [`SpillStore`]; `bench reconcile-s3` runs them on `S3Spill` and counts its requests
//! through a [`Probe`].

use crate::measure::{cpu_time, peak_rss_bytes};
use async_trait::async_trait;
use shared::adapters::local::LocalSpill;
use shared::error::StoreError;
use shared::model::{ID_SHARDS, Micros, shard_of};
use shared::ports::SpillStore;
use shared::setdiff::{
    DEFAULT_MAX_FAN_IN, DiffOutputs, MergeOptions, RunReader, RunWriter, RunsWritten,
    SortedRunWriter, diff_with,
};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;
use tokio::io::AsyncRead;

/// Arguments of `bench reconcile`.
#[derive(clap::Args, Debug, Clone)]
pub struct ReconcileBenchArgs {
    /// `(id, version)` pairs on each side.
    #[arg(long, default_value_t = 10_000_000)]
    pub pairs: usize,
    /// Pairs per spilled run.
    #[arg(long, default_value_t = 1_000_000)]
    pub run_size: usize,
    /// Pairs per object of the diff's output lists.
    #[arg(long, default_value_t = 100_000)]
    pub chunk_size: usize,
    /// Merge inputs read at once per side (more are merged first).
    #[arg(long, default_value_t = DEFAULT_MAX_FAN_IN)]
    pub max_fan_in: usize,
    /// The spill folder (emptied first, removed after).
    #[arg(long, default_value = "target/bench-reconcile")]
    pub dir: PathBuf,
}

impl ReconcileBenchArgs {
    fn sizes(&self) -> Sizes {
        Sizes {
            pairs: self.pairs,
            run_size: self.run_size,
            chunk_size: self.chunk_size,
            max_fan_in: self.max_fan_in,
        }
    }
}

/// How much the benchmark generates and how it splits it, whatever the store.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// `(id, version)` pairs on each side.
    pub pairs: usize,
    /// Pairs per spilled run.
    pub run_size: usize,
    /// Pairs per object of the diff's output lists.
    pub chunk_size: usize,
    /// Merge inputs read at once per side.
    pub max_fan_in: usize,
}

/// One operation's requests (attempts, retries included) and HTTP body bytes.
#[derive(Debug, Default, Clone, Copy)]
pub struct OpCount {
    pub requests: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// Requests per operation name.
pub type Requests = BTreeMap<&'static str, OpCount>;

/// What the store behind the spill was asked, phase by phase.
pub trait Probe {
    /// The requests since the last call (which it resets), or `None` when the store's requests
    /// are not counted (a folder).
    fn take(&self) -> Option<Requests>;
}

/// A folder: no requests to count.
struct Uncounted;

impl Probe for Uncounted {
    fn take(&self) -> Option<Requests> {
        None
    }
}

/// The spill, counting the bytes and objects put through it.
struct CountingSpill<'a> {
    inner: &'a dyn SpillStore,
    put_bytes: AtomicU64,
    put_objects: AtomicU64,
}

impl CountingSpill<'_> {
    /// `(objects, bytes)` put since the last call.
    fn take_puts(&self) -> (u64, u64) {
        (
            self.put_objects.swap(0, Relaxed),
            self.put_bytes.swap(0, Relaxed),
        )
    }
}

#[async_trait]
impl SpillStore for CountingSpill<'_> {
    async fn put(&self, key: &str, body: Vec<u8>) -> Result<(), StoreError> {
        let len = body.len() as u64;
        self.inner.put(key, body).await?;
        self.put_bytes.fetch_add(len, Relaxed);
        self.put_objects.fetch_add(1, Relaxed);
        Ok(())
    }
    async fn open(&self, key: &str) -> Result<Box<dyn AsyncRead + Send + Unpin>, StoreError> {
        self.inner.open(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        self.inner.delete_prefix(prefix).await
    }
}

const BASE_US: Micros = 1_704_067_200_000_000;
const YEAR_US: u64 = 365 * 86_400 * 1_000_000;

/// What universe index `i` is: 0 source only, 1 destination only, 2 stale, 3 equal.
fn kind(i: u64) -> u64 {
    (i % 101).min(3)
}

fn mix(mut x: u64) -> u64 {
    // splitmix64
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn dst_version(i: u64) -> Micros {
    BASE_US + (mix(i) % YEAR_US) as Micros
}

/// The source's version of `i`, if the source has it.
fn source_pair(i: u64) -> Option<Micros> {
    match kind(i) {
        1 => None,
        2 => Some(dst_version(i) + 1 + (mix(i ^ 0x5555) % 1_000_000_000) as Micros),
        _ => Some(dst_version(i)),
    }
}

/// The destination's version of `i`, if the destination has it.
fn destination_pair(i: u64) -> Option<Micros> {
    (kind(i) != 0).then(|| dst_version(i))
}

/// `1..=u` in bytewise order of their decimal strings.
fn lexicographic(u: u64) -> impl Iterator<Item = u64> {
    let mut x = 1u64;
    (0..u).map(move |_| {
        let cur = x;
        if x * 10 <= u {
            x *= 10;
        } else {
            while x % 10 == 9 || x + 1 > u {
                x /= 10;
            }
            x += 1;
        }
        cur
    })
}

/// `n` in decimal, into `buf`.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

/// Resets VmHWM to the current RSS (Linux ≥ 4.0); whether it could.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

struct Phase {
    cpu: f64,
    wall: f64,
    peak: u64,
}

/// Runs `f`, measuring its CPU time, wall time and peak RSS.
fn measured<T>(f: impl FnOnce() -> T) -> (T, Phase) {
    reset_peak();
    let (c0, t0) = (cpu_time(), Instant::now());
    let out = f();
    let phase = Phase {
        cpu: (cpu_time() - c0).as_secs_f64(),
        wall: t0.elapsed().as_secs_f64(),
        peak: peak_rss_bytes(),
    };
    (out, phase)
}

fn phase_json(p: &Phase, pairs: u64, extra: serde_json::Value) -> serde_json::Value {
    let v = serde_json::json!({
        "pairs": pairs,
        "cpu_seconds": round(p.cpu, 3),
        "wall_seconds": round(p.wall, 3),
        "pairs_per_cpu_second": (pairs as f64 / p.cpu.max(1e-9)).round(),
        "peak_rss_bytes": p.peak,
    });
    merged(v, extra)
}

/// `v` with the fields of `extra` added (both objects).
fn merged(mut v: serde_json::Value, extra: serde_json::Value) -> serde_json::Value {
    if let (Some(o), serde_json::Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    v
}

fn total_requests(r: &Requests) -> u64 {
    r.values().map(|c| c.requests).sum()
}

/// A phase's requests, per operation, and the pairs each request carried on average.
fn requests_json(r: &Requests, pairs: u64) -> serde_json::Value {
    let total = total_requests(r);
    let by_op: serde_json::Map<String, serde_json::Value> = r
        .iter()
        .map(|(op, c)| {
            let v = serde_json::json!({
                "requests": c.requests,
                "bytes_sent": c.bytes_sent,
                "bytes_received": c.bytes_received,
            });
            ((*op).to_owned(), v)
        })
        .collect();
    let mut v = serde_json::json!({ "total": total, "by_operation": by_op });
    if total > 0 && pairs > 0 {
        v["pairs_per_request"] = round(pairs as f64 / total as f64, 1).into();
    }
    v
}

/// Counts requests phase by phase, adding each phase's figures to its JSON.
struct Tally<'p> {
    probe: &'p dyn Probe,
    per_phase: Vec<(&'static str, u64)>,
    totals: Requests,
}

impl Tally<'_> {
    /// The phase's requests (as `{"requests": ...}`, or nothing when uncounted).
    fn phase(&mut self, name: &'static str, pairs: u64) -> serde_json::Value {
        let Some(r) = self.probe.take() else {
            return serde_json::json!({});
        };
        self.per_phase.push((name, total_requests(&r)));
        for (op, c) in &r {
            let t = self.totals.entry(op).or_default();
            t.requests += c.requests;
            t.bytes_sent += c.bytes_sent;
            t.bytes_received += c.bytes_received;
        }
        serde_json::json!({ "requests": requests_json(&r, pairs) })
    }

    /// All phases' requests (as `{"requests": ...}`, or nothing when uncounted).
    fn summary(&self, pairs: u64) -> serde_json::Value {
        if self.per_phase.is_empty() {
            return serde_json::json!({});
        }
        let per_phase: serde_json::Map<String, serde_json::Value> = self
            .per_phase
            .iter()
            .map(|(p, n)| ((*p).to_owned(), (*n).into()))
            .collect();
        serde_json::json!({
            "requests": merged(
                requests_json(&self.totals, pairs),
                serde_json::json!({ "per_phase": per_phase }),
            )
        })
    }
}

/// The benchmark on a local folder; `Err` names what failed.
pub fn run(args: &ReconcileBenchArgs) -> Result<serde_json::Value, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let _ = std::fs::remove_dir_all(&args.dir);
    let spill = LocalSpill::new(&args.dir).map_err(|e| format!("spill folder: {e}"))?;
    let out = rt.block_on(bench(&spill, &args.sizes(), &Uncounted));
    let _ = std::fs::remove_dir_all(&args.dir);
    out
}

/// Generation, both sides' runs, the merge and diff, a check of the outputs, and the cleanup
/// (`delete_prefix`), on `store` under `bench/`; requests counted by `probe` where it can.
pub async fn bench(
    store: &dyn SpillStore,
    args: &Sizes,
    probe: &dyn Probe,
) -> Result<serde_json::Value, String> {
    let spill = &CountingSpill {
        inner: store,
        put_bytes: AtomicU64::new(0),
        put_objects: AtomicU64::new(0),
    };
    let mut tally = Tally {
        probe,
        per_phase: Vec::new(),
        totals: Requests::new(),
    };
    probe.take(); // whatever came before (creating the bucket)
    let n = args.pairs as u64;
    let universe = n * 101 / 100;
    let peak_reset_works = reset_peak();
    let start_rss = peak_rss_bytes();
    let mut buf = [0u8; 20];

    // The cost of generating the pairs alone (included in the write phases below).
    let (checksum, gen_phase) = measured(|| {
        let mut sum = 0u64;
        for i in 1..=universe {
            if let Some(v) = source_pair(i) {
                sum = sum.wrapping_add(decimal(i, &mut buf).len() as u64 ^ v as u64);
            }
        }
        sum
    });

    // Source: numeric order, sorted into runs.
    reset_peak();
    let (c0, t0) = (cpu_time(), Instant::now());
    let mut planted = [0u64; 3]; // source only, destination only, stale
    let source: RunsWritten = {
        let mut w =
            RunWriter::new(spill, "bench/source", args.run_size).map_err(|e| e.to_string())?;
        for i in 1..=universe {
            let k = kind(i);
            if k < 3 {
                planted[k as usize] += 1;
            }
            if let Some(v) = source_pair(i) {
                w.push(decimal(i, &mut buf), v)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        w.finish().await.map_err(|e| e.to_string())?
    };
    let src_phase = Phase {
        cpu: (cpu_time() - c0).as_secs_f64(),
        wall: t0.elapsed().as_secs_f64(),
        peak: peak_rss_bytes(),
    };
    let (_, src_bytes) = spill.take_puts();
    let src_requests = tally.phase("write_source", source.pairs);

    // Destination: bytewise order, split into the index shards, written without a sort.
    reset_peak();
    let (c0, t0) = (cpu_time(), Instant::now());
    let shards: Vec<RunsWritten> = {
        let shard_run = (args.run_size / usize::from(ID_SHARDS)).max(1);
        let mut writers = Vec::new();
        for shard in 0..ID_SHARDS {
            let prefix = format!("bench/destination/{shard:02}");
            writers
                .push(SortedRunWriter::new(spill, &prefix, shard_run).map_err(|e| e.to_string())?);
        }
        for i in lexicographic(universe) {
            if let Some(v) = destination_pair(i) {
                let id = decimal(i, &mut buf);
                let w = &mut writers[usize::from(shard_of(id))];
                w.push(id, v).await.map_err(|e| e.to_string())?;
            }
        }
        let mut done = Vec::new();
        for w in writers {
            done.push(w.finish().await.map_err(|e| e.to_string())?);
        }
        done
    };
    let dst_phase = Phase {
        cpu: (cpu_time() - c0).as_secs_f64(),
        wall: t0.elapsed().as_secs_f64(),
        peak: peak_rss_bytes(),
    };
    let (_, dst_bytes) = spill.take_puts();
    let dst_pairs: u64 = shards.iter().map(|w| w.pairs).sum();
    let dst_requests = tally.phase("write_destination", dst_pairs);
    let dst_runs: usize = shards.iter().map(|w| w.runs.len()).sum();
    let dst_sequences: Vec<Vec<String>> = shards.iter().flat_map(|w| w.sequences()).collect();

    // The merge and diff.
    let outputs = DiffOutputs {
        to_delete: "bench/out/to_delete".into(),
        to_fetch: "bench/out/to_fetch".into(),
        stale: "bench/out/stale".into(),
        newer: "bench/out/newer".into(),
        chunk_size: args.chunk_size,
    };
    reset_peak();
    let (c0, t0) = (cpu_time(), Instant::now());
    let merge = MergeOptions {
        max_fan_in: args.max_fan_in,
        scratch: "bench/premerge".into(),
    };
    let summary = diff_with(spill, &source.sequences(), &dst_sequences, &outputs, &merge)
        .await
        .map_err(|e| e.to_string())?;
    let diff_phase = Phase {
        cpu: (cpu_time() - c0).as_secs_f64(),
        wall: t0.elapsed().as_secs_f64(),
        peak: peak_rss_bytes(),
    };
    let (diff_objects_put, diff_bytes_put) = spill.take_puts();
    let pairs_total = source.pairs + dst_pairs;
    let diff_requests = tally.phase("merge_diff", pairs_total);

    // Check the outputs against what was planted (not timed).
    let t0 = Instant::now();
    let mut outputs_read = 0u64;
    let found = [
        summary.to_fetch.pairs,
        summary.to_delete.pairs,
        summary.stale.pairs,
    ];
    if found != planted {
        return Err(format!(
            "diff found (fetch, delete, stale) = {found:?}, planted {planted:?}"
        ));
    }
    for list in [&summary.to_fetch, &summary.to_delete, &summary.stale] {
        let mut read = 0u64;
        for key in list.keys() {
            let mut r = RunReader::open(spill, &key)
                .await
                .map_err(|e| e.to_string())?;
            outputs_read += 1;
            while let Some((id, _)) = r.next().await.map_err(|e| e.to_string())? {
                let i: u64 = id.parse().map_err(|e| format!("output id {id:?}: {e}"))?;
                let want = if list.prefix.ends_with("to_fetch") {
                    0
                } else if list.prefix.ends_with("to_delete") {
                    1
                } else {
                    2
                };
                if kind(i) != want {
                    return Err(format!("{id} listed under {}", list.prefix));
                }
                read += 1;
            }
        }
        if read != list.pairs {
            return Err(format!(
                "{} holds {read} pairs, summary says {}",
                list.prefix, list.pairs
            ));
        }
    }
    let run_objects = spill.list("bench/").await.map_err(|e| e.to_string())?.len();
    let verify_wall = t0.elapsed().as_secs_f64();
    let verify_requests = tally.phase(
        "verify",
        summary.to_fetch.pairs + summary.to_delete.pairs + summary.stale.pairs,
    );

    // The cleanup, as a run's last step does it.
    let t0 = Instant::now();
    let deleted = spill
        .delete_prefix("bench/")
        .await
        .map_err(|e| e.to_string())?;
    let cleanup_wall = t0.elapsed().as_secs_f64();
    if deleted != run_objects as u64 {
        return Err(format!(
            "delete_prefix removed {deleted} objects of {run_objects}"
        ));
    }
    let cleanup_requests = tally.phase("cleanup", 0);

    let out = serde_json::json!({
        "bench": "reconcile",
        "pairs_per_side": n,
        "run_size": args.run_size,
        "chunk_size": args.chunk_size,
        "max_fan_in": args.max_fan_in,
        "ids": "numeric strings 1..=U, U = N * 101 / 100",
        "format": "run v1: front-coded IDs, zigzag varint version deltas, xxh3-64 trailer",
        "generate_source_pairs": {
            "cpu_seconds": round(gen_phase.cpu, 3),
            "note": "included in write_source",
            "checksum": checksum,
        },
        "write_source": phase_json(&src_phase, source.pairs, merged(serde_json::json!({
            "writer": "RunWriter (numeric input order, sorted bytewise per run)",
            "runs": source.runs.len(),
            "bytes": src_bytes,
            "bytes_per_pair": round(src_bytes as f64 / source.pairs.max(1) as f64, 2),
        }), src_requests)),
        "write_destination": phase_json(&dst_phase, dst_pairs, merged(serde_json::json!({
            "writer": "16 SortedRunWriters, one per index shard (bytewise input order, checked)",
            "runs": dst_runs,
            "bytes": dst_bytes,
            "bytes_per_pair": round(dst_bytes as f64 / dst_pairs.max(1) as f64, 2),
        }), dst_requests)),
        "merge_diff": phase_json(&diff_phase, pairs_total, merged(serde_json::json!({
            "runs_read": source.runs.len() + dst_runs,
            "merge_inputs": source.sequences().len() + dst_sequences.len(),
            "premerges": summary.source.premerges + summary.destination.premerges,
            "target_pairs_per_cpu_second": 2_000_000,
            "objects_written": diff_objects_put,
            "bytes_written": diff_bytes_put,
        }), diff_requests)),
        "verify": merged(serde_json::json!({
            "note": "reads every output object back and lists the spill (not part of a run)",
            "objects_read": outputs_read,
            "wall_seconds": round(verify_wall, 3),
        }), verify_requests),
        "cleanup": merged(serde_json::json!({
            "op": "delete_prefix(\"bench/\")",
            "objects_deleted": deleted,
            "wall_seconds": round(cleanup_wall, 3),
        }), cleanup_requests),
        "diff": {
            "to_fetch": summary.to_fetch.pairs,
            "to_delete": summary.to_delete.pairs,
            "stale": summary.stale.pairs,
            "in_sync": summary.in_sync,
            "source_ids": summary.source.ids,
            "destination_ids": summary.destination.ids,
            "duplicates": summary.source.duplicates + summary.destination.duplicates,
            "output_objects": summary.to_fetch.objects + summary.to_delete.objects + summary.stale.objects,
            "planted_equal": true,
            "summary_json_bytes": serde_json::to_string(&summary).map(|s| s.len()).unwrap_or(0),
        },
        "objects_in_spill": run_objects,
        "rss_at_start_bytes": start_rss,
        "peak_rss_per_phase": peak_reset_works,
        "target_peak_rss_bytes": 256u64 << 20,
    });
    Ok(merged(out, tally.summary(pairs_total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexicographic_is_bytewise_order() {
        for u in [1, 9, 10, 11, 99, 100, 101, 1234] {
            let got: Vec<String> = lexicographic(u).map(|x| x.to_string()).collect();
            let mut want: Vec<String> = (1..=u).map(|x| x.to_string()).collect();
            want.sort();
            assert_eq!(got, want, "u = {u}");
        }
    }

    #[test]
    fn small_run_plants_and_finds_one_percent_each_way() {
        let dir = std::env::temp_dir().join(format!("bench-reconcile-{}", uuid::Uuid::new_v4()));
        let out = run(&ReconcileBenchArgs {
            pairs: 20_000,
            run_size: 1_000,
            chunk_size: 64,
            max_fan_in: 8,
            dir: dir.clone(),
        })
        .expect("bench runs");
        assert_eq!(out["diff"]["to_fetch"], 200);
        assert_eq!(out["diff"]["to_delete"], 200);
        assert_eq!(out["diff"]["stale"], 200);
        assert_eq!(out["write_source"]["pairs"], 20_000);
        assert_eq!(out["write_destination"]["pairs"], 20_000);
        assert!(out["merge_diff"]["premerges"].as_u64() > Some(0), "{out}");
        assert!(!dir.exists(), "spill folder removed");
    }
}
