//! `serve` end to end: the simulator's signed deliveries reach the ingest, the worker fetches
//! and writes to the local store; refusals; the dead letters and their replay.

use super::*;
use crate::dlq::{list_local, replay_local};
use shared::model::Strategy;
use shared::ports::RecordStore;
use shared::wire::{ENVELOPE_VERSION, MessageKind, QueueEnvelope};
use source_sim::{
    Entity, PcoEncoding, RetrySchedule, SimConfig, SimHandle, WebhookScheme, WebhookTarget,
};
use std::future::Future;
use testkit::config::basic;

const WEBHOOK_SECRET: &str = "test-webhook-secret";
const WAIT: Duration = Duration::from_secs(10);

/// Poll `cond` every 5 ms until it holds (`Some`), or fail naming `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut cond: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = cond().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The simulator (`people` people, basic auth), and a config pointed at it.
async fn sim_and_config(people: usize) -> (SimHandle, Config, Arc<SourceClient>) {
    let sim = testkit::sim::start(SimConfig {
        people,
        donations: 0,
        auth: Some(basic::header()),
        ..SimConfig::default()
    })
    .await;
    let mut config = testkit::config::at(&sim.base_url());
    config.source.auth = basic::auth();
    let source =
        Arc::new(SourceClient::new(&config, Some(basic::secret())).expect("source client"));
    (sim, config, source)
}

struct Rig {
    sim: SimHandle,
    store: LocalStore,
    serve: ServeHandle,
    source: Arc<SourceClient>,
}

async fn rig(people: usize, queue_options: QueueOptions) -> Rig {
    let (sim, config, source) = sim_and_config(people).await;
    let store = LocalStore::in_memory().expect("store");
    let serve = start(ServeOptions {
        worker: WorkerOptions::default(),
        queue_options,
        ..ServeOptions::new(
            store.clone(),
            config,
            vec![WEBHOOK_SECRET.into()],
            source.clone(),
        )
    })
    .await
    .expect("serve starts");
    sim.set_webhook_target(Some(
        WebhookTarget::new(
            serve.webhook_url.clone(),
            WebhookScheme::Pco {
                encoding: PcoEncoding::Hex,
            },
            WEBHOOK_SECRET,
        )
        .with_retry(RetrySchedule::fast()),
    ))
    .expect("webhook target");
    Rig {
        sim,
        store,
        serve,
        source,
    }
}

/// Wait until the store holds `id` at the source's current version.
async fn wait_visible(store: &LocalStore, id: u64, updated_at_us: i64) {
    let id = id.to_string();
    wait_for(
        &format!("people {id} at {updated_at_us} in the store"),
        WAIT,
        || async {
            let r = store.get("people", &id).await.expect("get")?;
            (r.version.delta_us == updated_at_us && !r.is_deleted()).then_some(())
        },
    )
    .await;
}

/// The stored payload is the source's current document.
async fn assert_same_as_source(store: &LocalStore, sim: &source_sim::Sim, id: u64) {
    let stored = store.get("people", &id.to_string()).await.unwrap().unwrap();
    let source: serde_json::Value =
        serde_json::from_str(&sim.record_json(Entity::People, id).unwrap()).unwrap();
    assert_eq!(stored.payload, source["data"], "people {id}");
}

#[tokio::test]
async fn deliveries_from_the_simulator_update_create_and_soft_delete_records() {
    let r = rig(50, QueueOptions::default()).await;
    let sim = r.sim.sim();
    assert!(
        r.store.get("people", "5").await.unwrap().is_none(),
        "empty store"
    );

    let v = sim.update(Entity::People, 5, None).expect("person 5");
    wait_visible(&r.store, 5, v.updated_at_us).await;
    let stored = r.store.get("people", "5").await.unwrap().unwrap();
    assert_eq!(stored.written_by, Strategy::Webhook);
    assert_same_as_source(&r.store, &sim, 5).await;

    // A second update of the same record moves it again.
    let v2 = sim.update(Entity::People, 5, None).expect("person 5");
    assert!(v2.updated_at_us >= v.updated_at_us);
    wait_visible(&r.store, 5, v2.updated_at_us).await;
    assert_same_as_source(&r.store, &sim, 5).await;

    let created = sim.create(Entity::People, None);
    wait_visible(&r.store, created.id, created.updated_at_us).await;

    assert!(sim.delete(Entity::People, created.id));
    let id = created.id.to_string();
    wait_for("the deleted person soft-deleted", WAIT, || async {
        let rec = r.store.get("people", &id).await.expect("get")?;
        rec.is_deleted().then_some(())
    })
    .await;
    // Soft: the item is still there, with its last payload.
    let rec = r.store.get("people", &id).await.unwrap().unwrap();
    assert_eq!(rec.version.delta_us, created.updated_at_us);

    // Every delivery was answered 200, first time.
    let ws = sim
        .wait_webhooks(WAIT, |s| s.pending == 0 && s.delivered >= 4)
        .await
        .expect("deliveries done");
    assert_eq!((ws.non_200, ws.retries), (0, 0), "{ws:?}");
    let s = wait_for("the worker's counters", WAIT, || async {
        let s = r.serve.stats();
        (s.messages >= 4).then_some(s)
    })
    .await;
    assert_eq!(s.accepted, 4, "{s:?}");
    assert_eq!(s.events_queued, 4);
    assert_eq!(s.messages_failed, 0);
    assert_eq!(s.deleted, 1);
    assert!(r.source.stats().requests >= 4);
    let c = r.serve.queue.counts().await.unwrap();
    assert_eq!((c.visible, c.in_flight, c.dead), (0, 0, 0), "all deleted");

    // Shut down: the port no longer answers.
    let url = r.serve.webhook_url.clone();
    let final_stats = r.serve.shutdown().await.expect("clean shutdown");
    assert_eq!(final_stats.accepted, 4);
    assert!(
        reqwest::Client::new()
            .post(&url)
            .body("{}")
            .send()
            .await
            .is_err(),
        "nothing listens after shutdown"
    );
}

#[tokio::test]
async fn bad_signatures_get_401_and_oversized_bodies_our_413_and_nothing_is_queued() {
    let r = rig(5, QueueOptions::default()).await;
    let http = reqwest::Client::new();
    let body = br#"{"data":[]}"#.to_vec();

    let missing = http
        .post(&r.serve.webhook_url)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 401);
    let wrong = http
        .post(&r.serve.webhook_url)
        .header("X-PCO-Webhooks-Authenticity", "00".repeat(32))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(
        wrong.headers()["content-type"],
        "application/json",
        "our JSON answer"
    );
    assert!(wrong.text().await.unwrap().contains("invalid signature"));

    // Signed with the right secret, the same body is accepted (so the 401s were the signature's).
    let scheme = crate::sign::Scheme::PcoHex.config();
    let good = shared::webhook::signature::sign(&scheme, WEBHOOK_SECRET, &body, "", 0).unwrap();
    let ok = http
        .post(&r.serve.webhook_url)
        .header(good[0].0.as_str(), good[0].1.as_str())
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);

    // Larger than max_body_bytes (1 MiB), and than axum's own default limit (2 MB): the answer
    // is the ingest's 413 with its JSON, not the server's.
    for size in [1024 * 1024 + 1, 3 * 1024 * 1024] {
        let big = vec![b' '; size];
        let sig = shared::webhook::signature::sign(&scheme, WEBHOOK_SECRET, &big, "", 0).unwrap();
        let resp = http
            .post(&r.serve.webhook_url)
            .header(sig[0].0.as_str(), sig[0].1.as_str())
            .body(big)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 413, "{size} bytes");
        let text = resp.text().await.unwrap();
        assert!(text.contains(r#""limit_bytes":1048576"#), "{size}: {text}");
    }
    // Exactly at the limit: not too large (401: not signed).
    let at_limit = http
        .post(&r.serve.webhook_url)
        .body(vec![b' '; 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(at_limit.status(), 401);

    let s = r.serve.stats();
    assert_eq!(
        (s.unauthorized, s.too_large, s.accepted, s.events_queued),
        (3, 2, 1, 0),
        "{s:?}"
    );
    assert_eq!(r.serve.queue.counts().await.unwrap(), Default::default());
    let health = http
        .get(format!("{}/health", r.serve.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let health: serde_json::Value = serde_json::from_str(&health).unwrap_or_default();
    assert_eq!(health["status"], "ok", "{health}");
}

#[tokio::test]
async fn a_poison_message_goes_to_the_dead_letters_and_replay_puts_it_back() {
    let r = rig(
        5,
        QueueOptions {
            visibility_timeout: Duration::from_millis(150),
            max_receives: Some(2),
        },
    )
    .await;
    let good = serde_json::to_string(&QueueEnvelope {
        v: ENVELOPE_VERSION,
        kind: MessageKind::Targeted,
        entity: "people".into(),
        id: "3".into(),
        event_id: None,
        action: None,
        reason: Some("test".into()),
        received_at: now_us(),
    })
    .unwrap();
    let failed = r
        .serve
        .queue
        .send_batch(&["not json\nat all".to_owned(), good])
        .await
        .unwrap();
    assert!(failed.is_empty());

    let q = r.serve.queue.clone();
    wait_for("the poison message in the dead letters", WAIT, || async {
        let c = q.counts().await.expect("counts");
        (c.dead == 1 && c.visible == 0 && c.in_flight == 0).then_some(())
    })
    .await;
    assert!(
        r.store.get("people", "3").await.unwrap().is_some(),
        "the good message of the same batch was processed"
    );
    let stats = r.serve.shutdown().await.expect("shutdown");
    assert_eq!(
        stats.messages_failed, 2,
        "the poison message failed twice: {stats:?}"
    );

    let rows = list_local(&q, 10, false).await.unwrap();
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.receive_count, 2);
    assert_eq!(row.entity, None);
    assert_eq!(row.preview, "not json\\nat all");
    assert!(row.body.is_none() && row.dead_at.is_some());

    let replayed = replay_local(&q, Some(&["nope".to_owned(), row.message_id.clone()]))
        .await
        .unwrap();
    assert_eq!(replayed.moved, 1);
    assert_eq!(replayed.not_found, ["nope"]);
    let c = q.counts().await.unwrap();
    assert_eq!((c.visible, c.dead), (1, 0));
    let back = q.receive(10, 0).await.unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].message_id, row.message_id);
    assert_eq!(back[0].body, "not json\nat all");
    assert_eq!(back[0].receive_count, 1, "a fresh start");
    assert!(list_local(&q, 10, false).await.unwrap().is_empty());
}

#[tokio::test]
async fn replay_all_moves_every_dead_letter() {
    let store = LocalStore::in_memory().unwrap();
    let q = store.queue(
        "work",
        QueueOptions {
            visibility_timeout: Duration::from_millis(1),
            max_receives: Some(1),
        },
    );
    q.send_batch(&["a".to_owned(), "b".to_owned(), "c".to_owned()])
        .await
        .unwrap();
    assert_eq!(q.receive(10, 0).await.unwrap().len(), 3);
    wait_for("three dead letters", WAIT, || async {
        let _ = q.receive(10, 0).await.expect("receive");
        (q.counts().await.expect("counts").dead == 3).then_some(())
    })
    .await;
    let r = replay_local(&q, None).await.unwrap();
    assert_eq!(r.moved, 3);
    assert!(r.not_found.is_empty());
    assert_eq!(q.counts().await.unwrap().dead, 0);
}

#[tokio::test]
async fn missing_secrets_are_named_and_a_bad_config_refuses_to_start() {
    let (_sim, mut config, source) = sim_and_config(1).await;
    let var = "SYNCCTL_TEST_SECRETS_THAT_ARE_NEVER_SET";
    config.webhooks.as_mut().unwrap().secrets.env = var.into();
    let e = webhook_secrets_from_env(&config).unwrap_err();
    assert!(e.starts_with(&format!("{var} is not set")), "{e}");

    let mut no_table = config.clone();
    no_table.webhooks = None;
    assert!(
        webhook_secrets_from_env(&no_table)
            .unwrap_err()
            .contains("[webhooks]")
    );
    let e = start(ServeOptions::new(
        LocalStore::in_memory().unwrap(),
        no_table,
        vec!["s".into()],
        source.clone(),
    ))
    .await
    .unwrap_err();
    assert!(e.contains("webhooks"), "{e}");
    let e = start(ServeOptions::new(
        LocalStore::in_memory().unwrap(),
        config,
        vec![],
        source,
    ))
    .await
    .unwrap_err();
    assert!(e.contains("secret"), "{e}");
}

#[test]
fn a_batch_line_has_the_counts() {
    let line = describe_batch(&BatchReport {
        messages: 3,
        failed: vec!["m".into()],
        poison: 1,
        get_by_id_calls: 2,
        written: 1,
        deleted: 1,
        ..BatchReport::default()
    });
    assert!(
        line.starts_with("batch: 3 messages, 2 done, 1 failed — 2 get_by_id, 1 written, 1 deleted"),
        "{line}"
    );
    assert!(line.ends_with("1 undecodable"), "{line}");
}
