//! The sorted-run reader (`setdiff::runs`) on damaged objects: truncated anywhere, bytes
//! flipped, bytes appended, the header's pair count rewritten, read through a stream that
//! hands out a few bytes at a time. It must end in a typed error (truncated, corrupt,
//! unsupported format, unsorted) or give exactly the pairs written: never a panic, never other
//! pairs (a diff acts on what the reader gives).

use super::{Budget, Outcome, drive, re, runtime};
use crate::model::Micros;
use crate::setdiff::runs::Encoder;
use crate::setdiff::{RunReader, SetDiffError};
use proptest::prelude::*;
use proptest::sample::Index;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

/// What is done to a run object's bytes.
#[derive(Debug, Clone)]
pub enum Damage {
    None,
    Truncate(Index),
    /// XOR these (non-zero) masks into these bytes.
    Flip(Vec<(Index, u8)>),
    Append(Vec<u8>),
    /// Overwrite the header's pair count.
    Count(u64),
}

#[derive(Debug, Clone)]
pub struct Case {
    /// Sorted bytewise by ID, then by version (what the writers produce).
    pub pairs: Vec<(String, Micros)>,
    pub damage: Damage,
    /// Bytes the stream hands out per read.
    pub chunk: usize,
}

fn id() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => re("p[0-9]{1,7}"),
        2 => re("[a-c]{1,4}"),
        2 => prop::collection::vec(any::<char>(), 1..24).prop_map(String::from_iter),
        1 => (1000usize..=1024).prop_map(|n| "x".repeat(n)),
        1 => re("[\u{0}-\u{7f}]{1,8}"),
    ]
}

fn version() -> impl Strategy<Value = Micros> {
    prop_oneof![
        any::<Micros>(),
        prop::sample::select(&[0, 1, -1, Micros::MIN, Micros::MAX, 1_700_000_000_000_000][..]),
    ]
}

pub fn cases() -> impl Strategy<Value = Case> {
    let damage = prop_oneof![
        1 => Just(Damage::None),
        2 => any::<Index>().prop_map(Damage::Truncate),
        4 => prop::collection::vec((any::<Index>(), 1u8..=255), 1..4).prop_map(Damage::Flip),
        1 => prop::collection::vec(any::<u8>(), 1..16).prop_map(Damage::Append),
        1 => any::<u64>().prop_map(Damage::Count),
    ];
    (
        prop::collection::vec((id(), version()), 0..80),
        damage,
        prop_oneof![1 => Just(1usize), 3 => 2usize..64, 2 => Just(1 << 20)],
    )
        .prop_map(|(mut pairs, damage, chunk)| {
            pairs.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()).then(a.1.cmp(&b.1)));
            Case {
                pairs,
                damage,
                chunk,
            }
        })
}

/// A stream over `data` that hands out at most `chunk` bytes per read.
struct Chunked {
    data: Vec<u8>,
    pos: usize,
    chunk: usize,
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self
            .chunk
            .min(buf.remaining())
            .min(self.data.len() - self.pos);
        let pos = self.pos;
        buf.put_slice(&self.data[pos..pos + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

const KEY: &str = "fuzz/000000.run";

async fn read_all(data: Vec<u8>, chunk: usize) -> Result<Vec<(String, Micros)>, SetDiffError> {
    let src = Chunked {
        data,
        pos: 0,
        chunk,
    };
    let mut r = RunReader::from_reader(KEY, Box::new(src)).await?;
    let mut out = Vec::new();
    while let Some((id, v)) = r.next().await? {
        out.push((id.to_owned(), v));
    }
    Ok(out)
}

/// The property of one case.
pub fn check(case: Case, rt: &tokio::runtime::Runtime) -> Result<(), String> {
    let mut enc = Encoder::new();
    for (id, v) in &case.pairs {
        enc.push(id.as_bytes(), *v);
    }
    let (original, _) = enc.finish();
    let mut bytes = original.clone();
    match &case.damage {
        Damage::None => {}
        Damage::Truncate(i) => bytes.truncate(i.index(bytes.len())),
        Damage::Flip(flips) => {
            for (i, mask) in flips {
                let at = i.index(bytes.len());
                bytes[at] ^= mask;
            }
        }
        Damage::Append(more) => bytes.extend_from_slice(more),
        Damage::Count(n) => bytes[8..16].copy_from_slice(&n.to_le_bytes()),
    }
    let damaged = bytes != original;
    match rt.block_on(read_all(bytes, case.chunk)) {
        Ok(got) if got == case.pairs => Ok(()),
        Ok(got) => Err(format!(
            "read {} pairs that differ from the {} written (damaged: {damaged})",
            got.len(),
            case.pairs.len()
        )),
        Err(e) if !damaged => Err(format!("an intact run refused: {e}")),
        Err(
            SetDiffError::Truncated { key, .. }
            | SetDiffError::Corrupt { key, .. }
            | SetDiffError::UnsupportedFormat { key, .. },
        ) if key == KEY => Ok(()),
        Err(SetDiffError::Unsorted { context, .. }) if context.contains(KEY) => Ok(()),
        Err(e) => Err(format!("an untyped or misattributed error: {e:?}")),
    }
}

pub fn run(budget: Budget) -> Outcome {
    let rt = runtime();
    drive("run_reader", budget, cases(), |c| check(c, &rt))
}
