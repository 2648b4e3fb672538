//! The schedule: from one seed, a list of operations (source activity, webhook deliveries,
//! faults, crashes and the steps of the three strategies) in the order the harness runs them.

use source_sim::Entity;

/// What happens to the webhook a source change sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Queued at once.
    Deliver,
    /// Never arrives (delta sync and reconciliation must still catch the change).
    Drop,
    /// Queued twice (the same event ID).
    Duplicate,
    /// Held back until a later [`Op::FlushDelayed`] (which may reorder).
    Delay,
}

/// A scripted source fault (the simulator's `Fault` queue: each API request takes the next).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// 429 with `Retry-After: 0`.
    RateLimited,
    /// 503 with a JSON body.
    Unavailable,
    /// A 502 HTML page, as a proxy sends.
    BadGateway,
    /// 200 with the body cut in the middle.
    Truncated,
    /// An answer slower than the client's timeout.
    Timeout,
    /// The next ID listing (a reconciliation's Source step) ends after its first page, with
    /// no way to resume: a source cutting its listing off mid-reconciliation.
    ListingCut,
    /// The next ID listing serves no IDs and a total of 0, as if the source were emptied.
    ListingEmptied,
    /// The next reconciliation run's listing leaves out one record the source has (and counts
    /// one fewer), until that run ends: only confirming each deletion with `get_by_id` keeps
    /// it (I4).
    ListingHidesOne,
    /// The next reconciliation run reads an empty account until it ends: an empty listing
    /// with a total of 0, and 404 for every `get_by_id` (an API key moved to another account).
    /// Confirmation cannot tell; only the guard keeps the records (I4).
    SourceEmptied,
}

/// A named crash point: the next call there fails once (the process "dies"), and the
/// schedule's later steps are the retry Lambda, SQS or Step Functions would make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// The control store's next `save_cursor` fails: after a page's records were written,
    /// before its checkpoint (records and control are separate files), or a lease renewal.
    BeforeCheckpoint,
    /// The record store's next write fails.
    RecordWrite,
    /// The worker's next read of processed events fails (before any work).
    BeforeDedupRead,
    /// The worker's next `complete_event` fails (after the work).
    AfterWork,
    /// The next reconciliation step runs but its output is lost (mid-spill in Source,
    /// between diff and apply in Diff/Guard, mid-apply in Apply): Step Functions retries the
    /// step with its previous input.
    ReconcileStepLost,
}

/// One operation of a schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `n` records created at once (one shared timestamp when `n > 1`).
    Create { entity: Entity, n: u8, fate: Fate },
    /// The live record at position `pick` (modulo) updated.
    Update {
        entity: Entity,
        pick: u32,
        fate: Fate,
    },
    /// The live record at position `pick` updated with a timestamp ten minutes old: a change
    /// committed later than delta sync's overlap allows (a long transaction). Delta sync does
    /// not promise it (I1 exempts it); reconciliation finds it stale and repairs it (a targeted
    /// sync, or a rewind of the delta cursor over `targeted_limit`).
    LateCommit {
        entity: Entity,
        pick: u32,
        fate: Fate,
    },
    /// The source's clock steps by `ms` (an NTP correction): later changes and its `Date`
    /// header follow it. Back by more than delta sync's overlap, later changes are stamped below
    /// the cursor (late, as `LateCommit`), and an update can be stamped below the record's
    /// previous version: a regression, repaired by reconciliation (both entities opt in,
    /// `allow_version_regression`).
    ClockStep { ms: i64 },
    /// A record deleted earlier (at position `pick` among them) created again under its ID.
    Recreate {
        entity: Entity,
        pick: u32,
        fate: Fate,
    },
    /// Several live records updated on one timestamp.
    UpdateManyOneTimestamp { entity: Entity, picks: Vec<u32> },
    /// The live record at position `pick` deleted.
    Delete {
        entity: Entity,
        pick: u32,
        fate: Fate,
    },
    /// The held-back webhooks delivered, in reverse order when `reverse`.
    FlushDelayed { reverse: bool },
    /// An event delivered earlier arrives again (a sender's replay).
    /// `expired`: after the worker's dedup has forgotten it (past `retain_us`), as a new event.
    Replay { pick: u32, expired: bool },
    /// One delta-sync invocation of the entity (bounded to `max_pages` pages).
    DeltaRun { entity: Entity, max_pages: u8 },
    /// A delta invocation that reads its first page and is held before writing it for `hold`
    /// operations (the others run meanwhile: webhooks, worker batches, reconciliation steps,
    /// another delta invocation meeting the lease), then goes on.
    DeltaHeld {
        entity: Entity,
        max_pages: u8,
        hold: u8,
    },
    /// A record of the page the held delta run holds (at position `pick`, modulo) updated, or
    /// deleted, at the source: the run writes an older copy than the webhook's.
    ChangeHeld { pick: u32, delete: bool, fate: Fate },
    /// One worker invocation on up to `max` messages.
    WorkerBatch { max: u8 },
    /// One step of the entity's reconciliation (a new run is planned when none is under way).
    ReconcileStep { entity: Entity },
    /// The next `count` API requests fail with `kind`.
    SourceFault { kind: FaultKind, count: u8 },
    /// Arm a crash point.
    Crash(CrashPoint),
}

/// A scenario: its seed and its operations.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub seed: u64,
    pub people: usize,
    pub donations: usize,
    /// Records per page of every listing (the entities' `page_size`).
    pub page_size: u32,
    /// The source's clock minus ours, in milliseconds (constant for the scenario).
    pub clock_skew_ms: i64,
    pub ops: Vec<Op>,
}

fn entity(rng: &mut fastrand::Rng) -> Entity {
    if rng.u8(0..3) == 0 {
        Entity::Donations
    } else {
        Entity::People
    }
}

fn fate(rng: &mut fastrand::Rng) -> Fate {
    match rng.u8(0..10) {
        0 | 1 => Fate::Drop,
        2 => Fate::Duplicate,
        3 | 4 => Fate::Delay,
        _ => Fate::Deliver,
    }
}

impl Scenario {
    /// The scenario of `seed`: the same seed, the same operations (`fastrand`'s wyrand).
    pub fn generate(seed: u64) -> Scenario {
        let mut rng = fastrand::Rng::with_seed(seed);
        let people = rng.usize(8..40);
        // At least 8 records each: the schedule's at most 3 deletions never empty an entity
        // nor pass the harness's 50% delete share (the guard would rightly block the run).
        let donations = rng.usize(8..20);
        let clock_skew_ms = rng.i64(-3_000..=3_000);
        let page_size = rng.u32(3..=12);
        let len = rng.usize(20..60);
        let mut ops = Vec::with_capacity(len);
        let mut deletes = 0usize;
        for _ in 0..len {
            let op = match rng.u8(0..106) {
                0..=9 => Op::Create {
                    entity: entity(&mut rng),
                    n: if rng.u8(0..4) == 0 { rng.u8(2..6) } else { 1 },
                    fate: fate(&mut rng),
                },
                10..=29 => Op::Update {
                    entity: entity(&mut rng),
                    pick: rng.u32(..),
                    fate: fate(&mut rng),
                },
                30..=33 => Op::UpdateManyOneTimestamp {
                    entity: entity(&mut rng),
                    picks: (0..rng.u8(2..6)).map(|_| rng.u32(..)).collect(),
                },
                // Deletions stay under the reconciliation guard's share.
                34..=39 if deletes < 3 => {
                    deletes += 1;
                    Op::Delete {
                        entity: entity(&mut rng),
                        pick: rng.u32(..),
                        fate: fate(&mut rng),
                    }
                }
                40..=43 => Op::FlushDelayed {
                    reverse: rng.bool(),
                },
                44..=45 => Op::Replay {
                    pick: rng.u32(..),
                    expired: rng.u8(0..10) < 3,
                },
                46..=52 => Op::DeltaRun {
                    entity: entity(&mut rng),
                    max_pages: rng.u8(1..4),
                },
                53..=57 => Op::DeltaHeld {
                    entity: entity(&mut rng),
                    max_pages: rng.u8(1..4),
                    hold: rng.u8(1..5),
                },
                58..=70 => Op::WorkerBatch { max: rng.u8(1..11) },
                71..=89 => Op::ReconcileStep {
                    entity: entity(&mut rng),
                },
                90..=95 => Op::SourceFault {
                    kind: match rng.u8(0..9) {
                        0 => FaultKind::RateLimited,
                        1 => FaultKind::Unavailable,
                        2 => FaultKind::BadGateway,
                        3 => FaultKind::Truncated,
                        4 => FaultKind::Timeout,
                        5 => FaultKind::ListingCut,
                        6 => FaultKind::ListingEmptied,
                        7 => FaultKind::ListingHidesOne,
                        _ => FaultKind::SourceEmptied,
                    },
                    count: rng.u8(1..3),
                },
                100..=101 => Op::ClockStep {
                    ms: if rng.u8(0..10) < 7 {
                        rng.i64(-3_000..=3_000)
                    } else {
                        rng.i64(60_000..=300_000) * if rng.bool() { 1 } else { -1 }
                    },
                },
                102..=103 => Op::LateCommit {
                    entity: entity(&mut rng),
                    pick: rng.u32(..),
                    fate: fate(&mut rng),
                },
                104..=105 => Op::Recreate {
                    entity: entity(&mut rng),
                    pick: rng.u32(..),
                    fate: fate(&mut rng),
                },
                _ => Op::Crash(match rng.u8(0..5) {
                    0 => CrashPoint::BeforeCheckpoint,
                    1 => CrashPoint::RecordWrite,
                    2 => CrashPoint::BeforeDedupRead,
                    3 => CrashPoint::AfterWork,
                    _ => CrashPoint::ReconcileStepLost,
                }),
            };
            // A reconciliation while a delta run is in flight: a change committed late (below
            // the cursor), a delta run held while eight steps of the entity's reconciliation
            // run (its repair may rewind the cursor to the late change: the rewind takes the
            // delta lease), then a delta run. The source's clock steps forward first, so that
            // the held run's cursor moves past the earlier runs' (its ceiling is later).
            if let Op::DeltaHeld {
                entity: e,
                max_pages,
                ..
            } = op
                && rng.u8(0..10) < 3
            {
                ops.push(Op::ClockStep {
                    ms: rng.i64(2_000..=6_000),
                });
                ops.push(Op::LateCommit {
                    entity: e,
                    pick: rng.u32(..),
                    fate: Fate::Drop,
                });
                ops.push(Op::DeltaHeld {
                    entity: e,
                    max_pages,
                    hold: 8,
                });
                ops.extend(std::iter::repeat_n(Op::ReconcileStep { entity: e }, 8));
                ops.push(Op::DeltaRun {
                    entity: e,
                    max_pages: 3,
                });
                continue;
            }
            // What makes an interleaving count: a fault or crash met by the step it was
            // armed for, a record changed while a held delta run holds an older copy of it.
            let follow = match &op {
                Op::Crash(p) => Some(match p {
                    CrashPoint::BeforeCheckpoint => Op::DeltaRun {
                        entity: entity(&mut rng),
                        max_pages: rng.u8(1..4),
                    },
                    CrashPoint::ReconcileStepLost => Op::ReconcileStep {
                        entity: entity(&mut rng),
                    },
                    _ => Op::WorkerBatch { max: rng.u8(1..11) },
                }),
                Op::SourceFault { .. } if rng.bool() => Some(match rng.u8(0..3) {
                    0 => Op::DeltaRun {
                        entity: entity(&mut rng),
                        max_pages: rng.u8(1..4),
                    },
                    1 => Op::WorkerBatch { max: rng.u8(1..11) },
                    _ => Op::ReconcileStep {
                        entity: entity(&mut rng),
                    },
                }),
                Op::DeltaHeld { .. } if rng.u8(0..10) < 7 => Some(Op::ChangeHeld {
                    pick: rng.u32(..),
                    delete: rng.u8(0..4) == 0 && deletes < 3,
                    fate: fate(&mut rng),
                }),
                _ => None,
            };
            ops.push(op);
            if let Some(f) = follow {
                if matches!(f, Op::ChangeHeld { delete: true, .. }) {
                    deletes += 1;
                }
                // A held record's webhook, or the redelivery of a message whose batch crashed.
                let again = matches!(f, Op::ChangeHeld { .. } | Op::WorkerBatch { .. });
                ops.push(f);
                if again {
                    ops.push(Op::WorkerBatch { max: 10 });
                }
            }
        }
        Scenario {
            seed,
            people,
            donations,
            page_size,
            clock_skew_ms,
            ops,
        }
    }
}
