//! Tokens and secrets that cross a trust boundary (issue 12, requirements 6 and 7), against the
//! simulator (a second one playing the foreign host), the embedded store with a spill folder,
//! and moto's Secrets Manager.
//!
//! The pairs (protection -> its negative control):
//! - the origin check on a resumed listing: `a_resumed_next_url_on_another_host_is_refused_before_any_request`
//!   -> `negative_control_without_the_origin_check_the_credential_reaches_the_other_host`;
//! - the resume token's MAC: `the_source_step_refuses_forged_and_altered_resume_tokens`
//!   -> `negative_control_an_unchecked_altered_token_is_followed_and_records_go_missing`;
//! - the clean restart under a rotated key: `a_token_signed_under_a_rotated_key_restarts_the_listing_and_the_diff_is_right`
//!   -> `negative_control_a_restart_that_keeps_the_old_runs_hides_deletions`;
//! - the source secret re-read after a 401: `a_rotated_source_secret_is_read_again_after_a_401`
//!   -> `negative_control_without_the_reread_the_rotated_source_secret_fails`;
//! - the webhook secrets re-read: `a_webhook_signed_with_a_rotated_secret_is_accepted_after_one_reread`
//!   -> `negative_control_without_the_reread_the_rotated_webhook_is_refused`.

use crate::harness::{emulators, scratch, sdk_config, unique_name};
use futures::StreamExt;
use shared::SourceError;
use shared::adapters::local::{LocalQueue, LocalSpill, LocalStore, QueueOptions};
use shared::adapters::secrets::{SecretSource, StoreSecret};
use shared::config::{AuthConfig, Config, Pagination, Secret, SecretProvider, SecretRef};
use shared::core::timefmt::now_us;
use shared::core::token::{TokenError, TokenKey};
use shared::error::{SyncError, WalkError};
use shared::ports::{Queue, SourceApi, SpillStore};
use shared::source::SourceClient;
use shared::sync::delta::{DeltaOptions, run_delta};
use shared::sync::reconcile::{self as r, PlanInput, ReconcileDeps, ReconcileOptions, StepError};
use shared::webhook::Ingest;
use shared::webhook::ingest::Answer;
use shared::webhook::signature::sign;
use source_sim::{Entity, SimConfig, SimHandle};
use std::sync::Arc;
use testkit::{TempDir, sim};

const E: &str = "people";
/// What the Source step's tags are for (`shared::sync::reconcile::listing`).
const RESUME_PURPOSE: &str = "reconcile-resume";

/// The embedded configuration at the simulator, `people` only, paged by JSON:API `links.next`
/// (the style whose resume token carries a URL), bearer auth when `bearer`.
fn config(h: &SimHandle, bearer: bool) -> Config {
    testkit::config::quick(&h.base_url(), |c| {
        c.source.max_attempts = 1;
        c.entities.truncate(1);
        c.source.pagination = Pagination::LinksNext {
            limit_param: "per_page".into(),
            next_pointer: "/links/next".into(),
        };
        if bearer {
            c.source.auth = AuthConfig::Bearer {
                secret: SecretRef {
                    env: "SYNC_TEST_UNUSED_SOURCE_TOKEN".into(),
                },
            };
        }
    })
}

/// A simulator of `people` people that wants `auth` on every request.
async fn sim_with_auth(people: usize, auth: Option<&str>) -> SimHandle {
    sim::start(SimConfig {
        auth: auth.map(str::to_owned),
        ..sim::people_only(people)
    })
    .await
}

pub(crate) struct Local {
    pub(crate) store: Arc<LocalStore>,
    queue: LocalQueue,
    spill: LocalSpill,
    _folder: TempDir,
}

pub(crate) fn local() -> Local {
    let store = Arc::new(LocalStore::in_memory().unwrap());
    let queue = store.queue("work", QueueOptions::default());
    let folder = scratch("trust");
    let spill = LocalSpill::new(folder.path()).unwrap();
    Local {
        store,
        queue,
        spill,
        _folder: folder,
    }
}

pub(crate) fn deps<'a>(cfg: &'a Config, src: &'a SourceClient, l: &'a Local) -> ReconcileDeps<'a> {
    ReconcileDeps {
        config: cfg,
        source: src,
        records: l.store.as_ref(),
        control: l.store.as_ref(),
        spill: &l.spill,
        queue: &l.queue,
    }
}

pub(crate) async fn planned(d: &ReconcileDeps<'_>, opts: &ReconcileOptions) -> r::RunRef {
    let plan = r::plan(
        d,
        &PlanInput {
            entity: Some(E.into()),
            ..Default::default()
        },
        opts,
    )
    .await
    .unwrap();
    plan.runs[0].clone()
}

pub(crate) async fn source_step(
    d: &ReconcileDeps<'_>,
    run: &r::RunRef,
    progress: Option<r::SourceProgress>,
    opts: &ReconcileOptions,
) -> Result<r::SourceProgress, StepError> {
    r::source(
        d,
        &r::SourceInput {
            run: run.clone(),
            progress,
        },
        opts,
    )
    .await
}

/// One page per Source invocation.
fn one_page() -> ReconcileOptions {
    ReconcileOptions {
        max_source_pages: 1,
        ..Default::default()
    }
}

/// The token's next URL with its `offset` set to `offset` (a token someone altered to skip
/// records).
fn skip_to(token: &str, offset: u64) -> String {
    let mut t: serde_json::Value = serde_json::from_str(token).unwrap();
    let mut next = reqwest::Url::parse(t["next"].as_str().expect("a links token")).unwrap();
    let pairs: Vec<(String, String)> = next
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "offset" {
                offset.to_string()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    assert!(pairs.iter().any(|(k, _)| k == "offset"), "{next}");
    next.query_pairs_mut().clear().extend_pairs(pairs);
    t["next"] = next.as_str().into();
    t.to_string()
}

/// A resume token that continues at `host`'s people listing.
fn token_at(host: &SimHandle) -> String {
    serde_json::json!({
        "next": format!("{}/people/v2/people?order=id&per_page=100&offset=100", host.base_url())
    })
    .to_string()
}

// --- requirement 6: resume tokens ------------------------------------------------------------

#[tokio::test]
async fn a_resumed_next_url_on_another_host_is_refused_before_any_request() {
    let h = sim_with_auth(300, Some("Bearer tok")).await;
    // The other host would accept the credential: any request it answers carried it.
    let other = sim_with_auth(300, Some("Bearer tok")).await;
    let cfg = config(&h, true);
    let client = SourceClient::new(&cfg, Some(Secret::new("tok"))).unwrap();
    let token = token_at(&other);
    let first = client.stream_ids_from(E, Some(&token)).next().await;
    let Some(Err(SourceError::Walk { source, .. })) = first else {
        panic!("{first:?}")
    };
    assert!(
        matches!(&source, WalkError::ForeignResume { origin } if *origin == other.base_url()),
        "{source:?}"
    );
    assert!(source.to_string().contains("source.base_url"), "{source}");
    assert!(!source.is_retryable());
    assert_eq!(other.stats().requests, 0, "nothing reached the other host");
    assert_eq!(h.stats().requests, 0);

    // The same through the Source step, with a token signed under the step's own key (as if
    // the key had leaked): the origin check holds on its own, and the run fails.
    let l = local();
    let d = deps(&cfg, &client, &l);
    let opts = ReconcileOptions::default();
    let run = planned(&d, &opts).await;
    let (_, key) = opts.token_key.current();
    let sig = key.sign(
        RESUME_PURPOSE,
        &[
            run.entity.as_bytes(),
            run.run_id.as_bytes(),
            token.as_bytes(),
        ],
    );
    let progress = r::SourceProgress {
        resume: Some(token.clone()),
        resume_sig: Some(sig),
        ..Default::default()
    };
    // (Also what an in-flight run meets when `SOURCE_BASE_URL` changed under it.) The listing
    // ends not normally: the guard deletes nothing, the error names the setting.
    let p = source_step(&d, &run, Some(progress), &opts).await.unwrap();
    assert!(p.done && !p.ended_normally, "{p:?}");
    assert!(
        p.error
            .as_deref()
            .is_some_and(|e| e.contains("source.base_url")),
        "{p:?}"
    );
    assert_eq!(other.stats().requests, 0, "nothing reached the other host");
}

#[tokio::test]
async fn negative_control_without_the_origin_check_the_credential_reaches_the_other_host() {
    let h = sim_with_auth(300, Some("Bearer tok")).await;
    let other = sim_with_auth(300, Some("Bearer tok")).await;
    let cfg = config(&h, true);
    let client = SourceClient::new(&cfg, Some(Secret::new("tok")))
        .unwrap()
        .without_resume_origin_check();
    let token = token_at(&other);
    // The first request goes to the other host with the credential (its page's own next link
    // is then refused, too late).
    let _ = client.stream_ids_from(E, Some(&token)).next().await;
    let s = other.stats();
    assert!(s.requests >= 1, "{s:?}");
    assert_eq!(
        s.unauthorized, 0,
        "the other host accepted the request: it carried the credential"
    );
}

#[tokio::test]
async fn the_source_step_refuses_forged_and_altered_resume_tokens() {
    let h = sim::people(450).await;
    let cfg = config(&h, false);
    let client = SourceClient::new(&cfg, None).unwrap();
    let l = local();
    let d = deps(&cfg, &client, &l);
    let opts = one_page();
    let run = planned(&d, &opts).await;
    let p1 = source_step(&d, &run, None, &opts).await.unwrap();
    let token = p1.resume.clone().expect("a resume token");
    assert!(
        p1.resume_sig
            .as_deref()
            .is_some_and(|s| s.starts_with("t1."))
    );
    // The genuine token is followed.
    let p2 = source_step(&d, &run, Some(p1.clone()), &opts)
        .await
        .unwrap();
    assert_eq!(p2.pairs, 200);

    let requests = h.stats().requests;
    let altered = r::SourceProgress {
        resume: Some(skip_to(&token, 300)),
        ..p1.clone()
    };
    let unsigned = r::SourceProgress {
        resume_sig: None,
        ..altered.clone()
    };
    let (_, key) = opts.token_key.current();
    let forged = r::SourceProgress {
        resume_sig: Some(format!("t1.{}.{}", key.id(), "A".repeat(43))),
        ..altered.clone()
    };
    // A token signed for another run of the same entity is no good here either.
    let other_run = r::RunRef {
        run_id: "rec-someone-else".into(),
        ..run.clone()
    };
    let foreign_sig = key.sign(
        RESUME_PURPOSE,
        &[
            other_run.entity.as_bytes(),
            other_run.run_id.as_bytes(),
            token.as_bytes(),
        ],
    );
    let replayed = r::SourceProgress {
        resume_sig: Some(foreign_sig),
        ..p1.clone()
    };
    for (name, p, want) in [
        ("altered", altered, TokenError::Mismatch),
        ("unsigned", unsigned, TokenError::Unsigned),
        ("forged", forged.clone(), TokenError::Mismatch),
        ("another run's", replayed, TokenError::Mismatch),
    ] {
        let e = source_step(&d, &run, Some(p), &opts).await.unwrap_err();
        assert!(
            matches!(&e, StepError::ResumeToken(t) if *t == want),
            "{name}: {e}"
        );
        assert_eq!(e.error_type(), "Reconcile.BadInput", "{name}: not retried");
    }
    assert_eq!(
        h.stats().requests,
        requests,
        "no refused token was followed"
    );

    // The Lambda's path: the step fails with the name the state machine's Catch takes to its
    // failure path, which records the run as failed.
    let input = serde_json::json!({"step": "source", "run": run, "progress": forged});
    let e = r::dispatch(&d, input, &opts).await.unwrap_err();
    assert_eq!(e.error_type(), "Reconcile.BadInput");
    let summary = r::finish(&d, &r::FinishInput::failed(run.clone(), &e), &opts)
        .await
        .unwrap();
    assert_eq!(summary.status, "failed");
}

#[tokio::test]
async fn negative_control_an_unchecked_altered_token_is_followed_and_records_go_missing() {
    let h = sim::people(450).await;
    let cfg = config(&h, false);
    let client = SourceClient::new(&cfg, None).unwrap();
    let l = local();
    let d = deps(&cfg, &client, &l);
    let opts = ReconcileOptions {
        verify_resume_tokens: false,
        ..one_page()
    };
    let run = planned(&d, &opts).await;
    let p1 = source_step(&d, &run, None, &opts).await.unwrap();
    let mut p = r::SourceProgress {
        resume: Some(skip_to(p1.resume.as_deref().unwrap(), 300)),
        ..p1
    };
    while !p.done {
        p = source_step(&d, &run, Some(p), &opts).await.unwrap();
    }
    assert!(p.ended_normally);
    assert_eq!(
        p.pairs, 250,
        "the altered token skipped 200 records, which the diff would take for deleted"
    );
}

/// A synced store of 450 people; the Source step run under key A for three invocations (three
/// runs spilled), two records of the later pages deleted at the source, then the listing
/// continued under key B (the secret rotated) with `clean_restart`. The diff's deletions.
async fn rotated_key_run(clean_restart: bool) -> (r::SourceProgress, u64) {
    let h = sim::people(450).await;
    let cfg = config(&h, false);
    let client = SourceClient::new(&cfg, None).unwrap();
    let l = local();
    run_delta(
        &client,
        l.store.as_ref(),
        l.store.as_ref(),
        E,
        &DeltaOptions::default(),
    )
    .await
    .unwrap();
    let d = deps(&cfg, &client, &l);
    let under_a = one_page();
    let run = planned(&d, &under_a).await;
    let mut p = None;
    for _ in 0..3 {
        p = Some(source_step(&d, &run, p, &under_a).await.unwrap());
    }
    let p = p.unwrap();
    assert_eq!((p.pages, p.next_run, p.done), (3, 3, false));
    let ids: Vec<u64> = h
        .sim()
        .versions(Entity::People)
        .iter()
        .map(|v| v.0)
        .collect();
    for id in [ids[150], ids[250]] {
        assert!(h.sim().delete(Entity::People, id));
    }
    let under_b = ReconcileOptions {
        token_key: ReconcileOptions::default().token_key,
        clean_restart,
        ..Default::default()
    };
    assert_ne!(
        under_a.token_key.current().1.id(),
        under_b.token_key.current().1.id()
    );
    let mut p = source_step(&d, &run, Some(p), &under_b).await.unwrap();
    assert_eq!(p.restarts, 1, "{p:?}");
    while !p.done {
        p = source_step(&d, &run, Some(p), &under_b).await.unwrap();
    }
    for &shard in &run.shards {
        r::destination(
            &d,
            &r::DestinationInput {
                run: run.clone(),
                shard,
            },
            &under_b,
        )
        .await
        .unwrap();
    }
    let diff = r::diff_step(&d, &r::DiffInput { run: run.clone() }, &under_b)
        .await
        .unwrap();
    let objects = l
        .spill
        .list(&format!("reconcile/{E}/{}/source/", run.run_id))
        .await
        .unwrap();
    assert!(!objects.is_empty());
    (p, diff.to_delete.pairs)
}

#[tokio::test]
async fn a_token_signed_under_a_rotated_key_restarts_the_listing_and_the_diff_is_right() {
    let (p, to_delete) = rotated_key_run(true).await;
    assert!(p.ended_normally, "{p:?}");
    assert_eq!(p.pairs, 448, "the whole listing again, once: {p:?}");
    assert_eq!(
        to_delete, 2,
        "exactly the two records deleted at the source"
    );
}

#[tokio::test]
async fn negative_control_a_restart_that_keeps_the_old_runs_hides_deletions() {
    let (p, to_delete) = rotated_key_run(false).await;
    assert_eq!(p.restarts, 1);
    assert_eq!(
        to_delete, 0,
        "the old attempt's runs still list the deleted records as present"
    );
}

#[test]
fn a_resume_tag_is_bound_to_its_key() {
    let a = TokenKey::generate();
    let tag = a.sign(RESUME_PURPOSE, &[b"people", b"run", b"{}"]);
    let b = TokenKey::generate();
    assert!(matches!(
        b.verify(RESUME_PURPOSE, &[b"people", b"run", b"{}"], &tag),
        Err(TokenError::OtherKey { .. })
    ));
}

// --- requirement 7: secrets read again without a cold start ----------------------------------

/// The SDK configuration with every service at moto (Secrets Manager included).
async fn moto_sdk() -> aws_config::SdkConfig {
    sdk_config()
        .await
        .to_builder()
        .endpoint_url(&emulators().moto_url)
        .build()
}

/// A new Secrets Manager secret on moto holding `value`, and a provider over it.
async fn moto_secret(
    sdk: &aws_config::SdkConfig,
    value: &str,
) -> (
    aws_sdk_secretsmanager::Client,
    String,
    Arc<dyn SecretProvider>,
) {
    let sm = aws_sdk_secretsmanager::Client::new(sdk);
    let out = sm
        .create_secret()
        .name(unique_name("it-secret"))
        .secret_string(value)
        .send()
        .await
        .unwrap();
    let arn = out.arn().unwrap().to_owned();
    let provider = Arc::new(StoreSecret::new(
        SecretSource::SecretsManager(arn.clone()),
        sdk,
    ));
    (sm, arn, provider)
}

async fn rotate(sm: &aws_sdk_secretsmanager::Client, arn: &str, value: &str) {
    sm.put_secret_value()
        .secret_id(arn)
        .secret_string(value)
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_rotated_source_secret_is_read_again_after_a_401() {
    let sdk = moto_sdk().await;
    let (sm, arn, provider) = moto_secret(&sdk, "tok-1").await;
    let h = sim_with_auth(10, Some("Bearer tok-1")).await;
    let cfg = config(&h, true);
    let client = SourceClient::new(&cfg, Some(provider.read().await.unwrap()))
        .unwrap()
        .with_secret_provider(provider.clone());
    assert!(client.get_by_id(E, "1").await.unwrap().is_some());
    // The owner rotates the token at the source and in Secrets Manager; no cold start.
    rotate(&sm, &arn, "tok-2").await;
    h.sim().set_auth(Some("Bearer tok-2".into()));
    assert!(client.get_by_id(E, "1").await.unwrap().is_some());
    assert_eq!(client.secret_rereads(), 1);
    assert_eq!(h.stats().unauthorized, 1, "one 401, then the retry passed");
    assert_eq!(client.stats().unauthorized, 0);
    // Later requests use the new secret at once.
    assert!(client.get_by_id(E, "2").await.unwrap().is_some());
    assert_eq!((client.secret_rereads(), h.stats().unauthorized), (1, 1));

    // A second 401 (the source wants a token the secret store does not hold): one re-read,
    // one retry, then SourceUnauthorized, counted (the client publishes the metric there).
    let fresh = SourceClient::new(&cfg, Some(provider.read().await.unwrap()))
        .unwrap()
        .with_secret_provider(provider.clone());
    h.sim().set_auth(Some("Bearer tok-3".into()));
    let e = fresh.get_by_id(E, "1").await.unwrap_err();
    assert!(
        matches!(e, SourceError::Unauthorized { reread: true, .. }),
        "{e:?}"
    );
    assert!(!e.is_retryable());
    let shown = e.to_string();
    assert!(
        shown.contains("SOURCE_SECRET_ID") && !shown.contains("tok-"),
        "{shown}"
    );
    assert_eq!(fresh.secret_rereads(), 1);
    assert_eq!(fresh.stats().unauthorized, 1);
    let metric: serde_json::Value =
        serde_json::from_str(&shared::source::http::unauthorized_metric()).unwrap();
    assert_eq!(metric["SourceUnauthorized"], 1.0);
    // And it fails the run that met it.
    let l = local();
    let run = run_delta(
        &fresh,
        l.store.as_ref(),
        l.store.as_ref(),
        E,
        &DeltaOptions::default(),
    )
    .await;
    assert!(
        matches!(
            run,
            Err(SyncError::Source(SourceError::Unauthorized { .. }))
        ),
        "{run:?}"
    );
}

#[tokio::test]
async fn negative_control_without_the_reread_the_rotated_source_secret_fails() {
    let sdk = moto_sdk().await;
    let (sm, arn, provider) = moto_secret(&sdk, "tok-1").await;
    let h = sim_with_auth(10, Some("Bearer tok-1")).await;
    let cfg = config(&h, true);
    let client = SourceClient::new(&cfg, Some(provider.read().await.unwrap())).unwrap();
    assert!(client.get_by_id(E, "1").await.unwrap().is_some());
    rotate(&sm, &arn, "tok-2").await;
    h.sim().set_auth(Some("Bearer tok-2".into()));
    let e = client.get_by_id(E, "1").await.unwrap_err();
    assert!(
        matches!(e, SourceError::Unauthorized { reread: false, .. }),
        "{e:?}"
    );
    assert_eq!(client.secret_rereads(), 0);
    assert_eq!(client.stats().unauthorized, 1);
}

/// A Planning Center delivery of one person update, signed with `secret`.
async fn deliver(ingest: &Ingest, secret: &str) -> Answer {
    let body = serde_json::json!({"data": [{"id": unique_name("ev"), "type": "EventDelivery", "attributes": {
        "name": "people.v2.events.person.updated",
        "payload": serde_json::json!({"data": {"id": "7"}}).to_string()
    }}]})
    .to_string();
    let pairs = sign(ingest.scheme(), secret, body.as_bytes(), "", 0).unwrap();
    let mut h = http::HeaderMap::new();
    for (k, v) in pairs {
        h.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    ingest.handle(&h, body.as_bytes(), now_us()).await
}

fn ingest_on(l: &Local, secret: &str) -> Ingest {
    let cfg = testkit::config::at("http://127.0.0.1:9");
    Ingest::new(&cfg, &[secret], Arc::new(l.queue.clone())).unwrap()
}

#[tokio::test]
async fn a_webhook_signed_with_a_rotated_secret_is_accepted_after_one_reread() {
    let sdk = moto_sdk().await;
    let (sm, arn, provider) = moto_secret(&sdk, "old-secret").await;
    let l = local();
    let ingest =
        ingest_on(&l, provider.read().await.unwrap().expose()).with_secret_provider(provider);
    assert_eq!(deliver(&ingest, "old-secret").await.status, 200);
    assert_eq!(
        ingest.secret_rereads(),
        0,
        "a matching signature reads nothing"
    );
    // The sender switches to a new secret, put in Secrets Manager (old and new, as the
    // README's rotation says).
    rotate(&sm, &arn, "old-secret new-secret").await;
    let a = deliver(&ingest, "new-secret").await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(ingest.secret_rereads(), 1);
    assert_eq!(deliver(&ingest, "old-secret").await.status, 200);
    assert_eq!(deliver(&ingest, "new-secret").await.status, 200);
    assert_eq!(ingest.secret_rereads(), 1, "the new secrets are cached");
    assert_eq!(l.queue.receive(10, 0).await.unwrap().len(), 4);

    // Bad signatures within a minute: one re-read between them, whatever their number.
    let l = local();
    let ingest = ingest_on(&l, "new-secret").with_secret_provider(Arc::new(StoreSecret::new(
        SecretSource::SecretsManager(arn.clone()),
        &sdk,
    )));
    for _ in 0..2 {
        assert_eq!(deliver(&ingest, "an-attackers-guess").await.status, 401);
    }
    assert_eq!(
        ingest.secret_rereads(),
        1,
        "two bad signatures, one re-read"
    );
    // A sender rotating within that minute waits for the next one (the sender retries).
    rotate(&sm, &arn, "newest-secret").await;
    assert_eq!(deliver(&ingest, "newest-secret").await.status, 401);
    assert_eq!(ingest.secret_rereads(), 1);
}

#[tokio::test]
async fn negative_control_without_the_reread_the_rotated_webhook_is_refused() {
    let sdk = moto_sdk().await;
    let (sm, arn, provider) = moto_secret(&sdk, "old-secret").await;
    let l = local();
    let ingest = ingest_on(&l, provider.read().await.unwrap().expose());
    assert_eq!(deliver(&ingest, "old-secret").await.status, 200);
    rotate(&sm, &arn, "old-secret new-secret").await;
    assert_eq!(deliver(&ingest, "new-secret").await.status, 401);
    assert_eq!(ingest.secret_rereads(), 0);
}

/// A function that read the signing key before a rotation meets a token signed under the new
/// key by another (fresh) instance: it reads the key again once and continues the listing
/// without a restart. Without the re-read (a key that is never read again), it restarts.
#[tokio::test]
async fn a_stale_key_is_read_again_before_a_token_under_another_key_restarts_the_listing() {
    let sdk = moto_sdk().await;
    let old_value = "o".repeat(64);
    let (sm, arn, provider) = moto_secret(&sdk, &old_value).await;
    let stale = shared::adapters::secrets::token_key_from(provider)
        .await
        .unwrap();
    let new_value = "n".repeat(64);
    rotate(&sm, &arn, &new_value).await;
    let fresh = shared::adapters::secrets::token_key_from(Arc::new(StoreSecret::new(
        SecretSource::SecretsManager(arn.clone()),
        &sdk,
    )))
    .await
    .unwrap();
    assert_ne!(stale.current().1.id(), fresh.current().1.id());

    let h = sim::people(450).await;
    let cfg = config(&h, false);
    let client = SourceClient::new(&cfg, None).unwrap();
    let l = local();
    let d = deps(&cfg, &client, &l);
    let by_fresh = ReconcileOptions {
        token_key: Arc::new(fresh),
        ..one_page()
    };
    let run = planned(&d, &by_fresh).await;
    let p1 = source_step(&d, &run, None, &by_fresh).await.unwrap();
    let by_stale = ReconcileOptions {
        token_key: Arc::new(stale),
        ..one_page()
    };
    let p2 = source_step(&d, &run, Some(p1.clone()), &by_stale)
        .await
        .unwrap();
    assert_eq!((p2.restarts, p2.pages, p2.pairs), (0, 2, 200), "{p2:?}");
    assert_eq!(by_stale.token_key.rereads(), 1);

    // A key never read again (no provider) restarts the listing instead.
    let fixed = ReconcileOptions {
        token_key: ReconcileOptions::default().token_key,
        ..one_page()
    };
    let p = source_step(&d, &run, Some(p1), &fixed).await.unwrap();
    assert_eq!((p.restarts, p.pages, p.pairs), (1, 1, 100), "{p:?}");
}
