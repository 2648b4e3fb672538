//! The streaming k-way merge of sorted runs, and the diff of the source side against the
//! destination side.
//!
//! A merge input is a *sequence*: one or more run keys whose concatenation is sorted (the runs of
//! one [`SortedRunWriter`], e.g. one destination index shard, or of an earlier merge), read one
//! run after another with a single open stream. Memory: one [`RunReader`] buffer per input
//! (32 KiB, plus whatever the spill store's reader holds: `LocalSpill` about 0.5 MiB), the
//! current ID of each side, and one encoded output chunk per list; never a set of IDs. The diff
//! bounds the number of inputs per side (`max_fan_in`) by merging the surplus first into chained
//! runs under a scratch prefix.

use super::SetDiffError;
use super::runs::{RunReader, RunsWritten, SortedRunWriter, run_key};
use crate::model::Micros;
use crate::ports::SpillStore;
use serde::{Deserialize, Serialize};

/// Inputs a diff merges at once per side, by default: with `LocalSpill` about 35 MiB of read
/// buffers per side.
pub const DEFAULT_MAX_FAN_IN: usize = 64;

/// A source version that says "present, version unknown" (a record the listing could not read
/// but whose ID it could): older than any stored version, so never stale, and never taken for a
/// version that went backwards (left out of the `newer` list).
pub const UNKNOWN_VERSION: Micros = Micros::MIN;

/// One merge input: the runs of a sequence read one after another, one open at a time, the
/// order checked across run boundaries too.
struct Chain<'a, S: ?Sized> {
    spill: &'a S,
    keys: Vec<String>,
    next_key: usize,
    reader: Option<RunReader>,
    /// The last ID of the previous run, for the check at a run boundary.
    last: Vec<u8>,
    at_boundary: bool,
    check_order: bool,
}

impl<S: SpillStore + ?Sized> Chain<'_, S> {
    /// Moves to the next pair: `false` once every run of the sequence ended and checked out.
    async fn advance(&mut self) -> Result<bool, SetDiffError> {
        loop {
            if let Some(r) = &mut self.reader {
                if r.advance().await? {
                    if self.at_boundary {
                        self.at_boundary = false;
                        if self.check_order && r.id() < self.last.as_slice() {
                            return Err(SetDiffError::Unsorted {
                                context: format!("run {} after the previous run", r.key()),
                                previous: super::shown(&self.last),
                                next: super::shown(r.id()),
                            });
                        }
                    }
                    return Ok(true);
                }
                if r.pairs() > 0 {
                    self.last.clear();
                    self.last.extend_from_slice(r.id());
                }
                self.reader = None;
            }
            let Some(key) = self.keys.get(self.next_key) else {
                return Ok(false);
            };
            self.reader = Some(RunReader::open(self.spill, key).await?);
            self.next_key += 1;
            self.at_boundary = self.next_key > 1;
        }
    }

    fn reader(&self) -> Option<&RunReader> {
        self.reader.as_ref()
    }
}

/// A k-way merge over sequences of runs: every pair in bytewise ID order (equal IDs in input
/// order). A binary min-heap of input indices keyed by each input's current ID: `log2(k)`
/// comparisons a pair, no copy of an ID.
pub struct RunMerge<'a, S: ?Sized> {
    inputs: Vec<Chain<'a, S>>,
    /// Indices of the inputs that have a current pair; `heap[0]` has the smallest ID.
    heap: Vec<usize>,
    /// `next` returned the top pair, which is to be consumed on the following call.
    yielded: bool,
}

impl<'a, S: SpillStore + ?Sized> RunMerge<'a, S> {
    /// Opens the first run of every sequence. A sequence is the keys of runs whose concatenation
    /// is sorted ([`RunsWritten::sequences`]); runs written apart are one sequence each.
    pub async fn open(spill: &'a S, sequences: &[Vec<String>]) -> Result<Self, SetDiffError> {
        let check_order = super::runs::order_checked();
        let mut inputs = Vec::with_capacity(sequences.len());
        let mut heap = Vec::with_capacity(sequences.len());
        for keys in sequences {
            let mut chain = Chain {
                spill,
                keys: keys.clone(),
                next_key: 0,
                reader: None,
                last: Vec::new(),
                at_boundary: false,
                check_order,
            };
            if chain.advance().await? {
                heap.push(inputs.len());
            }
            inputs.push(chain);
        }
        let mut m = RunMerge {
            inputs,
            heap,
            yielded: false,
        };
        for i in (0..m.heap.len() / 2).rev() {
            m.sift_down(i);
        }
        Ok(m)
    }

    /// Number of inputs merged.
    pub fn inputs(&self) -> usize {
        self.inputs.len()
    }

    /// The next pair in bytewise ID order, or `None` once every run ended and checked out.
    pub async fn next(&mut self) -> Result<Option<(&str, Micros)>, SetDiffError> {
        if std::mem::take(&mut self.yielded) {
            self.consume().await?;
        }
        let Some(r) = self.heap.first().and_then(|&i| self.inputs[i].reader()) else {
            return Ok(None);
        };
        self.yielded = true;
        let id = std::str::from_utf8(r.id()).map_err(|_| SetDiffError::Corrupt {
            key: r.key().to_owned(),
            message: "ID is not UTF-8".into(),
        })?;
        Ok(Some((id, r.version())))
    }

    /// The smallest current pair, not consumed.
    pub(crate) fn peek(&self) -> Option<(&[u8], Micros)> {
        let r = self.inputs[*self.heap.first()?].reader()?;
        Some((r.id(), r.version()))
    }

    /// Consumes the pair `peek` shows.
    pub(crate) async fn consume(&mut self) -> Result<(), SetDiffError> {
        let Some(&top) = self.heap.first() else {
            return Ok(());
        };
        if !self.inputs[top].advance().await? {
            self.heap.swap_remove(0);
        }
        self.sift_down(0);
        Ok(())
    }

    fn id(&self, input: usize) -> &[u8] {
        self.inputs[input].reader().map_or(&[], |r| r.id())
    }

    fn less(&self, a: usize, b: usize) -> bool {
        (self.id(a), a) < (self.id(b), b)
    }

    fn sift_down(&mut self, mut i: usize) {
        let n = self.heap.len();
        loop {
            let l = 2 * i + 1;
            if l >= n {
                return;
            }
            let r = l + 1;
            let c = if r < n && self.less(self.heap[r], self.heap[l]) {
                r
            } else {
                l
            };
            if !self.less(self.heap[c], self.heap[i]) {
                return;
            }
            self.heap.swap(c, i);
            i = c;
        }
    }
}

/// Merges `sequences` into one chained sequence of runs of at most `run_size` pairs under
/// `prefix` (duplicates kept): to bound a later merge's fan-in, or to continue a long merge in
/// another invocation.
pub async fn merge_runs<S: SpillStore + ?Sized>(
    spill: &S,
    sequences: &[Vec<String>],
    prefix: &str,
    run_size: usize,
) -> Result<RunsWritten, SetDiffError> {
    let mut out = SortedRunWriter::new(spill, prefix, run_size)?;
    let mut merge = RunMerge::open(spill, sequences).await?;
    while let Some((id, version)) = merge.peek() {
        out.push_bytes(id, version).await?;
        merge.consume().await?;
    }
    out.finish().await
}

/// Merges inputs (the first ones, into chained runs under `scratch/<pass>`) until at most
/// `max_fan_in` remain; returns them and the number of merges done.
async fn reduce_fan_in<S: SpillStore + ?Sized>(
    spill: &S,
    mut inputs: Vec<Vec<String>>,
    max_fan_in: usize,
    scratch: &str,
    run_size: usize,
) -> Result<(Vec<Vec<String>>, u32), SetDiffError> {
    let mut merges = 0u32;
    while inputs.len() > max_fan_in {
        // Merging g inputs into one removes g - 1: merge no more than needed.
        let g = (inputs.len() - max_fan_in + 1).min(max_fan_in);
        let group: Vec<Vec<String>> = inputs.drain(..g).collect();
        let prefix = format!("{}/{merges:04}", scratch.trim_end_matches('/'));
        let merged = merge_runs(spill, &group, &prefix, run_size).await?;
        inputs.extend(merged.sequences());
        merges += 1;
    }
    Ok((inputs, merges))
}

/// What one side of a diff held.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SideCounts {
    /// Run objects given.
    pub runs: u64,
    /// Intermediate merges done to bound the fan-in (each reads and rewrites its inputs once).
    pub premerges: u32,
    /// Pairs read, duplicates included.
    pub pairs: u64,
    /// Distinct IDs.
    pub ids: u64,
    /// Pairs whose ID an earlier pair of the same side already had (the highest version was
    /// kept): a source listing that repeated records across pages.
    pub duplicates: u64,
}

/// Where the diff writes its four lists, and how many pairs go in one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffOutputs {
    /// IDs at the destination only, with the destination's version.
    pub to_delete: String,
    /// IDs at the source only, with the source's version.
    pub to_fetch: String,
    /// IDs at both with a newer version at the source, with the source's version.
    pub stale: String,
    /// IDs at both with a newer version at the destination, with the source's version: a
    /// listing older than a write, or a source whose version went backwards (reconciliation's
    /// `regress` tells them apart). Pairs whose source version is [`UNKNOWN_VERSION`] are left
    /// out (they are counted in `destination_newer` all the same).
    pub newer: String,
    /// Pairs per output object (a list of any length is several objects); also the run size of
    /// intermediate merges.
    pub chunk_size: usize,
}

/// How many inputs a merge reads at once, and where the surplus is merged first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeOptions {
    /// Sequences merged at once per side ([`DEFAULT_MAX_FAN_IN`]); the first ones beyond are
    /// merged into chained runs first, so memory stays bounded whatever the number of runs.
    pub max_fan_in: usize,
    /// Where those intermediate merges go: deleted when the diff succeeds; keep it under the
    /// run's prefix so that the run's clean-up removes it after a failure.
    pub scratch: String,
}

impl MergeOptions {
    /// The defaults [`diff`] uses: [`DEFAULT_MAX_FAN_IN`], scratch `<parent of
    /// outputs.to_delete>/premerge` (beside the outputs).
    pub fn beside(outputs: &DiffOutputs) -> Self {
        let to_delete = outputs.to_delete.trim_end_matches('/');
        let scratch = match to_delete.rsplit_once('/') {
            Some((parent, _)) => format!("{parent}/premerge"),
            None => "premerge".to_owned(),
        };
        MergeOptions {
            max_fan_in: DEFAULT_MAX_FAN_IN,
            scratch,
        }
    }
}

/// One output list: sorted runs `<prefix>/000000.run` … (readable with [`RunReader`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListSummary {
    pub prefix: String,
    pub pairs: u64,
    pub objects: u32,
}

impl ListSummary {
    /// The keys of the list's objects, in order.
    pub fn keys(&self) -> Vec<String> {
        (0..self.objects)
            .map(|i| run_key(&self.prefix, i))
            .collect()
    }

    fn of(prefix: &str, written: &RunsWritten) -> Self {
        ListSummary {
            prefix: prefix.trim_end_matches('/').to_owned(),
            pairs: written.pairs,
            objects: written.next_index,
        }
    }
}

/// The result of a diff: counts and where the lists are, small whatever the entity size (fit
/// for a Step Functions state).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffSummary {
    pub source: SideCounts,
    pub destination: SideCounts,
    /// IDs at both sides with equal versions.
    pub in_sync: u64,
    /// IDs at both sides with the destination's version newer: a listing older than a write,
    /// or a source whose version went backwards (the `newer` list holds those with a known
    /// source version).
    pub destination_newer: u64,
    pub to_delete: ListSummary,
    pub to_fetch: ListSummary,
    pub stale: ListSummary,
    /// Absent in a summary written before the list existed: empty.
    #[serde(default)]
    pub newer: ListSummary,
    /// The largest `source version − destination version` among stale IDs (0 when none).
    pub stale_max_lag_us: Micros,
}

/// One step of the merge join of two sorted, duplicate-free sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    SourceOnly,
    DestinationOnly,
    Both,
    Done,
}

/// Which side the join advances, from the two current IDs (bytewise).
pub(crate) fn classify(source: Option<&[u8]>, destination: Option<&[u8]>) -> Step {
    match (source, destination) {
        (None, None) => Step::Done,
        (Some(_), None) => Step::SourceOnly,
        (None, Some(_)) => Step::DestinationOnly,
        (Some(s), Some(d)) => match s.cmp(d) {
            std::cmp::Ordering::Less => Step::SourceOnly,
            std::cmp::Ordering::Greater => Step::DestinationOnly,
            std::cmp::Ordering::Equal => Step::Both,
        },
    }
}

/// One side: its merged runs with equal IDs folded into one (highest version).
struct Side<'a, S: ?Sized> {
    merge: RunMerge<'a, S>,
    id: Vec<u8>,
    version: Micros,
    has: bool,
    counts: SideCounts,
}

impl<'a, S: SpillStore + ?Sized> Side<'a, S> {
    async fn open(
        spill: &'a S,
        sequences: Vec<Vec<String>>,
        max_fan_in: usize,
        scratch: &str,
        run_size: usize,
    ) -> Result<Self, SetDiffError> {
        let runs = sequences.iter().map(|s| s.len() as u64).sum();
        let (inputs, merges) =
            reduce_fan_in(spill, sequences, max_fan_in, scratch, run_size).await?;
        let mut side = Side {
            merge: RunMerge::open(spill, &inputs).await?,
            id: Vec::new(),
            version: 0,
            has: false,
            counts: SideCounts {
                runs,
                premerges: merges,
                ..SideCounts::default()
            },
        };
        side.next_id().await?;
        Ok(side)
    }

    fn current(&self) -> Option<&[u8]> {
        self.has.then_some(self.id.as_slice())
    }

    /// Moves to the next distinct ID, folding its duplicates.
    async fn next_id(&mut self) -> Result<(), SetDiffError> {
        let Some((id, version)) = self.merge.peek() else {
            self.has = false;
            return Ok(());
        };
        self.id.clear();
        self.id.extend_from_slice(id);
        self.version = version;
        self.has = true;
        self.counts.pairs += 1;
        self.counts.ids += 1;
        self.merge.consume().await?;
        while let Some((id, version)) = self.merge.peek() {
            if id != self.id.as_slice() {
                break;
            }
            self.version = self.version.max(version);
            self.counts.pairs += 1;
            self.counts.duplicates += 1;
            self.merge.consume().await?;
        }
        Ok(())
    }
}

/// Diffs source runs against destination runs, each run its own merge input, with the default
/// [`MergeOptions::beside`] the outputs. See [`diff_with`].
pub async fn diff<S: SpillStore + ?Sized>(
    spill: &S,
    source_runs: &[String],
    destination_runs: &[String],
    outputs: &DiffOutputs,
) -> Result<DiffSummary, SetDiffError> {
    let alone = |keys: &[String]| keys.iter().map(|k| vec![k.clone()]).collect::<Vec<_>>();
    let merge = MergeOptions::beside(outputs);
    diff_with(
        spill,
        &alone(source_runs),
        &alone(destination_runs),
        outputs,
        &merge,
    )
    .await
}

/// Diffs the source side against the destination side, streaming, and writes the four lists of
/// [`DiffOutputs`] as chained sorted runs of at most `chunk_size` pairs. Each side is a list of
/// sequences ([`RunsWritten::sequences`]: every run of a [`RunWriter`](super::RunWriter) alone,
/// the runs of one [`SortedRunWriter`], e.g. one index shard, together), duplicates allowed.
/// Returns counts and list locations only.
///
/// On `Err` (a store failure, a truncated, corrupt or unsorted run) nothing is proven: discard
/// whatever was written under the output and scratch prefixes.
pub async fn diff_with<S: SpillStore + ?Sized>(
    spill: &S,
    source: &[Vec<String>],
    destination: &[Vec<String>],
    outputs: &DiffOutputs,
    merge: &MergeOptions,
) -> Result<DiffSummary, SetDiffError> {
    if merge.max_fan_in < 2 {
        return Err(SetDiffError::InvalidArgument {
            name: "max_fan_in",
            message: "must be at least 2".into(),
        });
    }
    let chunk = outputs.chunk_size;
    let mut to_delete = SortedRunWriter::new(spill, &outputs.to_delete, chunk)?;
    let mut to_fetch = SortedRunWriter::new(spill, &outputs.to_fetch, chunk)?;
    let mut stale = SortedRunWriter::new(spill, &outputs.stale, chunk)?;
    let mut newer = SortedRunWriter::new(spill, &outputs.newer, chunk)?;
    let scratch = merge.scratch.trim_end_matches('/');
    let (fan_in, src_scratch, dst_scratch) = (
        merge.max_fan_in,
        format!("{scratch}/source"),
        format!("{scratch}/destination"),
    );
    let mut src = Side::open(spill, source.to_vec(), fan_in, &src_scratch, chunk).await?;
    let mut dst = Side::open(spill, destination.to_vec(), fan_in, &dst_scratch, chunk).await?;
    let (mut in_sync, mut destination_newer, mut stale_max_lag_us) = (0u64, 0u64, 0 as Micros);
    loop {
        match classify(src.current(), dst.current()) {
            Step::Done => break,
            Step::SourceOnly => {
                to_fetch.push_bytes(&src.id, src.version).await?;
                src.next_id().await?;
            }
            Step::DestinationOnly => {
                to_delete.push_bytes(&dst.id, dst.version).await?;
                dst.next_id().await?;
            }
            Step::Both => {
                match src.version.cmp(&dst.version) {
                    std::cmp::Ordering::Greater => {
                        stale.push_bytes(&src.id, src.version).await?;
                        let lag = src.version.saturating_sub(dst.version);
                        stale_max_lag_us = stale_max_lag_us.max(lag);
                    }
                    std::cmp::Ordering::Equal => in_sync += 1,
                    std::cmp::Ordering::Less => {
                        destination_newer += 1;
                        if src.version != UNKNOWN_VERSION {
                            newer.push_bytes(&src.id, src.version).await?;
                        }
                    }
                }
                src.next_id().await?;
                dst.next_id().await?;
            }
        }
    }
    let to_delete = to_delete.finish().await?;
    let to_fetch = to_fetch.finish().await?;
    let stale = stale.finish().await?;
    let newer = newer.finish().await?;
    if src.counts.premerges + dst.counts.premerges > 0 {
        spill.delete_prefix(&format!("{scratch}/")).await?;
    }
    Ok(DiffSummary {
        source: src.counts,
        destination: dst.counts,
        in_sync,
        destination_newer,
        to_delete: ListSummary::of(&outputs.to_delete, &to_delete),
        to_fetch: ListSummary::of(&outputs.to_fetch, &to_fetch),
        stale: ListSummary::of(&outputs.stale, &stale),
        newer: ListSummary::of(&outputs.newer, &newer),
        stale_max_lag_us,
    })
}
