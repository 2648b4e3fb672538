//! `check-source` against the simulator: a correct configuration passes every check; each
//! misbehaviour (or wrong setting) fails exactly the matching check, naming the field, and the
//! exit code says so. The control of every failing case is the passing one with the same
//! configuration and the flag off.

use super::*;
use shared::config::{Filter, FilterOp, IdOrder, Pagination};
use shared::source::probe::Check;
use source_sim::{Entity, Misbehave, SimConfig, SimHandle};

/// Records per entity: more than a page of 100, so that page sizes and pages 2 can be checked.
const N: usize = 150;

/// The simulator with `N` people and donations, records 1..=3 of each updated now (so the
/// delta order differs from the ID order and the order checks can decide), `flags` on.
async fn sim_with(cfg: SimConfig, flags: Misbehave) -> SimHandle {
    let sim = testkit::sim::start(SimConfig {
        people: N,
        donations: N,
        ..cfg
    })
    .await;
    for e in Entity::ALL {
        for id in 1..=3 {
            sim.update(e, id, None);
        }
    }
    sim.set_misbehave(flags);
    sim
}

async fn sim(flags: Misbehave) -> SimHandle {
    sim_with(SimConfig::default(), flags).await
}

/// The shipped configuration at the simulator (no auth, quick retries), then `edit`.
fn config(sim: &SimHandle, edit: impl FnOnce(&mut Config)) -> Config {
    testkit::config::quick(&sim.base_url(), edit)
}

async fn probe_people(cfg: &Config) -> EntityProbe {
    let client = SourceClient::new(cfg, None).expect("client");
    client.probe("people").await.expect("probed")
}

fn show(p: &EntityProbe) -> String {
    p.checks
        .iter()
        .map(|c| {
            format!(
                "{} {}: {} [{:?}]",
                c.verdict.as_str(),
                c.name,
                c.detail,
                c.field
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn by_name<'a>(p: &'a EntityProbe, name: &str) -> &'a Check {
    p.check(name)
        .unwrap_or_else(|| panic!("no check {name}:\n{}", show(p)))
}

/// Every check passed.
fn all_pass(p: &EntityProbe) {
    assert!(
        p.checks.iter().all(|c| c.verdict == Verdict::Pass),
        "{}",
        show(p)
    );
}

/// `name` failed naming `field`; every other check passed.
fn only_failure(p: &EntityProbe, name: &str, field: &str) {
    let c = by_name(p, name);
    assert_eq!(c.verdict, Verdict::Fail, "{}", show(p));
    assert_eq!(c.field.as_deref(), Some(field), "{}", show(p));
    for other in p.checks.iter().filter(|c| c.name != name) {
        assert_eq!(other.verdict, Verdict::Pass, "{}", show(p));
    }
    assert_eq!(exit_code(std::slice::from_ref(p)), FAILED);
}

fn names(p: &EntityProbe) -> Vec<&str> {
    p.checks.iter().map(|c| c.name).collect()
}

#[tokio::test]
async fn a_correct_config_passes_every_check_in_a_handful_of_requests() {
    let sim = sim(Misbehave::default()).await;
    let cfg = config(&sim, |_| {});
    let client = SourceClient::new(&cfg, None).unwrap();
    sim.reset_stats();
    let (code, out) = check(&cfg, &client, None, false).await;
    assert_eq!(code, PASSED, "{out}");
    assert!(out.contains("Every check passed."), "{out}");
    assert!(
        !out.contains("FAIL") && !out.contains("cannot check"),
        "{out}"
    );
    let requests = sim.stats().requests;
    assert!(
        requests <= 2 * 10,
        "{requests} requests for two entities: a handful each"
    );

    let p = probe_people(&cfg).await;
    all_pass(&p);
    assert_eq!(
        names(&p),
        [
            "listing",
            "order",
            "id_order",
            "filter",
            "page_size",
            "pagination",
            "get_by_id",
            "not_found"
        ]
    );
    assert!(
        by_name(&p, "filter")
            .detail
            .contains("where[updated_at][gte]="),
        "{}",
        show(&p)
    );

    let (code, out) = check(&cfg, &client, Some("donations"), true).await;
    assert_eq!(code, PASSED);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["entities"][0]["entity"], "donations");
    let checks = v["entities"][0]["checks"].as_array().unwrap();
    assert!(
        checks
            .iter()
            .all(|c| c["ok"] == true && c["status"] == "pass")
    );
    assert!(
        checks
            .iter()
            .all(|c| c["detail"].as_str().is_some_and(|d| !d.is_empty()))
    );
}

#[tokio::test]
async fn every_pagination_style_passes_when_honoured() {
    let sim = sim(Misbehave::default()).await;
    for style in [page_style(), cursor_style(), links_style()] {
        let cfg = config(&sim, |c| c.source.pagination = style.clone());
        all_pass(&probe_people(&cfg).await);
    }
    let cfg = config(&sim, |c| {
        c.entities[0].id_filter = true;
    });
    let p = probe_people(&cfg).await;
    all_pass(&p);
    assert!(names(&p).contains(&"id_filter"));
}

#[tokio::test]
async fn an_ignored_filter_fails_the_filter_check() {
    let sim = sim(Misbehave {
        ignore_filter: true,
        ..Misbehave::default()
    })
    .await;
    let p = probe_people(&config(&sim, |_| {})).await;
    only_failure(&p, "filter", "source.filter");
    assert!(by_name(&p, "filter").detail.contains("ignores the filter"));
    // Every filter style the configuration can name is ignored alike.
    let cfg = config(&sim, |c| {
        c.source.filter = Filter::Suffix {
            ops: vec![FilterOp::Gt],
        }
    });
    only_failure(&probe_people(&cfg).await, "filter", "source.filter");
}

#[tokio::test]
async fn an_ignored_order_fails_the_order_check() {
    let sim = sim(Misbehave {
        ignore_order: true,
        ..Misbehave::default()
    })
    .await;
    let p = probe_people(&config(&sim, |_| {})).await;
    only_failure(&p, "order", "source.order_param");
}

#[tokio::test]
async fn a_wrong_order_param_fails_the_order_check() {
    let sim = sim(Misbehave::default()).await;
    sim.reset_stats();
    let cfg = config(&sim, |c| c.source.order_param = "sort".into());
    let p = probe_people(&cfg).await;
    // The simulator ignores `sort` silently (no 400), as many servers do.
    assert_eq!(sim.stats().bad_requests, 0);
    only_failure(&p, "order", "source.order_param");
    assert!(
        by_name(&p, "order").detail.contains("sort=updated_at"),
        "{}",
        show(&p)
    );
}

#[tokio::test]
async fn a_wrong_id_order_fails_the_id_order_check() {
    let sim = sim(Misbehave::default()).await;
    let cfg = config(&sim, |c| c.entities[0].id_order = Some(IdOrder::Bytewise));
    let p = probe_people(&cfg).await;
    only_failure(&p, "id_order", "id_order");
    assert!(
        by_name(&p, "id_order")
            .detail
            .contains("set `id_order = \"numeric\"`"),
        "{}",
        show(&p)
    );
}

#[tokio::test]
async fn an_ignored_offset_fails_the_pagination_check() {
    let sim = sim(Misbehave {
        ignore_offset: true,
        ..Misbehave::default()
    })
    .await;
    let p = probe_people(&config(&sim, |_| {})).await;
    only_failure(&p, "pagination", "source.pagination");
    let d = &by_name(&p, "pagination").detail;
    assert!(
        d.contains("page 2 (offset=10) repeats 10 of page 1's 10 IDs"),
        "{d}"
    );
}

fn page_style() -> Pagination {
    Pagination::Page {
        page_param: "page".into(),
        limit_param: "per_page".into(),
        first_page: 1,
    }
}

fn cursor_style() -> Pagination {
    Pagination::Cursor {
        limit_param: "per_page".into(),
        cursor_param: "cursor".into(),
        next_cursor_pointer: "/meta/next_cursor".into(),
    }
}

fn links_style() -> Pagination {
    Pagination::LinksNext {
        limit_param: "per_page".into(),
        next_pointer: "/links/next".into(),
    }
}

#[tokio::test]
async fn an_ignored_page_number_fails_the_pagination_check() {
    let sim = sim(Misbehave {
        ignore_page: true,
        ..Misbehave::default()
    })
    .await;
    let p = probe_people(&config(&sim, |c| c.source.pagination = page_style())).await;
    only_failure(&p, "pagination", "source.pagination");
    let d = &by_name(&p, "pagination").detail;
    assert!(d.contains("page 2 (page=2) repeats"), "{d}");
}

#[tokio::test]
async fn an_ignored_cursor_fails_the_pagination_check() {
    let sim = sim(Misbehave {
        ignore_cursor: true,
        ..Misbehave::default()
    })
    .await;
    let p = probe_people(&config(&sim, |c| c.source.pagination = cursor_style())).await;
    only_failure(&p, "pagination", "source.pagination");
    let d = &by_name(&p, "pagination").detail;
    assert!(
        d.contains("page 2 (cursor=") && d.contains("repeats"),
        "{d}"
    );
}

#[tokio::test]
async fn a_last_page_served_past_the_end_fails_the_pagination_check() {
    let sim = sim(Misbehave {
        clamp_last_page: true,
        ..Misbehave::default()
    })
    .await;
    for style in [None, Some(page_style())] {
        let cfg = config(&sim, |c| {
            if let Some(s) = style {
                c.source.pagination = s;
            }
        });
        let p = probe_people(&cfg).await;
        only_failure(&p, "pagination", "source.pagination");
        assert!(
            by_name(&p, "pagination").detail.contains("past the end"),
            "{}",
            show(&p)
        );
    }
}

#[tokio::test]
async fn an_ignored_per_page_fails_the_page_size_check() {
    let sim = sim(Misbehave {
        ignore_per_page: true,
        ..Misbehave::default()
    })
    .await;
    let p = probe_people(&config(&sim, |_| {})).await;
    only_failure(&p, "page_size", "page_size");
    let d = &by_name(&p, "page_size").detail;
    assert!(d.contains("caps pages at 25"), "{d}");
    assert!(d.contains("asked per_page=10, got 25"), "{d}");
}

#[tokio::test]
async fn a_cap_below_page_size_fails_the_page_size_check_and_says_it() {
    let sim = sim_with(
        SimConfig {
            max_per_page: 50,
            ..SimConfig::default()
        },
        Misbehave::default(),
    )
    .await;
    let p = probe_people(&config(&sim, |_| {})).await;
    only_failure(&p, "page_size", "page_size");
    let d = &by_name(&p, "page_size").detail;
    assert!(
        d.contains("caps pages at 50; set `[[entity]] page_size` to 50 or less"),
        "{d}"
    );
    assert!(
        d.contains("set `source.max_page_size` to 50 or less"),
        "{d}"
    );
}

#[tokio::test]
async fn an_ignored_id_filter_fails_the_id_filter_check() {
    let sim = sim(Misbehave {
        ignore_id_filter: true,
        ..Misbehave::default()
    })
    .await;
    let p = probe_people(&config(&sim, |c| c.entities[0].id_filter = true)).await;
    only_failure(&p, "id_filter", "id_filter");
    // Without `id_filter = true` the ID filter is not probed at all.
    let p = probe_people(&config(&sim, |_| {})).await;
    all_pass(&p);
    assert!(!names(&p).contains(&"id_filter"));
}

#[tokio::test]
async fn a_wrong_path_fails_the_listing_and_the_404_check() {
    let sim = sim(Misbehave::default()).await;
    let cfg = config(&sim, |c| c.entities[0].path = "/people/v1/people".into());
    let p = probe_people(&cfg).await;
    for name in ["listing", "not_found"] {
        let c = by_name(&p, name);
        assert_eq!(c.verdict, Verdict::Fail, "{}", show(&p));
        assert_eq!(c.field.as_deref(), Some("path"), "{}", show(&p));
    }
    assert!(by_name(&p, "not_found").detail.contains("not JSON"));
    // What depends on the listing is undecided, not passed.
    for name in ["order", "filter", "get_by_id"] {
        assert_eq!(by_name(&p, name).verdict, Verdict::CannotCheck);
    }
    let (code, out) = check(
        &cfg,
        &SourceClient::new(&cfg, None).unwrap(),
        Some("people"),
        false,
    )
    .await;
    assert_eq!(code, FAILED);
    assert!(out.contains("fix: path"), "{out}");
}

#[tokio::test]
async fn too_few_records_cannot_be_checked_and_is_not_a_pass() {
    let sim = testkit::sim::start(SimConfig {
        people: 1,
        donations: 0,
        ..SimConfig::default()
    })
    .await;
    let cfg = config(&sim, |_| {});
    let p = probe_people(&cfg).await;
    assert!(!p.failed(), "{}", show(&p));
    for name in ["order", "filter", "pagination"] {
        assert_eq!(
            by_name(&p, name).verdict,
            Verdict::CannotCheck,
            "{}",
            show(&p)
        );
    }
    let client = SourceClient::new(&cfg, None).unwrap();
    let (code, out) = check(&cfg, &client, Some("people"), false).await;
    assert_eq!(code, UNDECIDED, "{out}");
    assert!(out.contains("not a pass"), "{out}");
    let (_, out) = check(&cfg, &client, Some("people"), true).await;
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["exit_code"], UNDECIDED);
}

#[tokio::test]
async fn an_unreachable_source_has_its_own_exit_code() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = testkit::config::quick(&format!("http://127.0.0.1:{port}"), |c| {
        c.source.max_attempts = 1;
    });
    let client = SourceClient::new(&cfg, None).unwrap();
    let (code, out) = check(&cfg, &client, None, false).await;
    assert_eq!(code, UNREACHABLE, "{out}");
    assert!(out.contains("cannot be reached"), "{out}");
    let (code, out) = check(&cfg, &client, None, true).await;
    assert_eq!(code, UNREACHABLE);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v["unreachable"].as_str().unwrap().contains("people"));
}

#[tokio::test]
async fn an_unknown_entity_is_refused() {
    let sim = sim(Misbehave::default()).await;
    let cfg = config(&sim, |_| {});
    let client = SourceClient::new(&cfg, None).unwrap();
    let (code, out) = check(&cfg, &client, Some("nope"), false).await;
    assert_eq!(code, FAILED);
    assert!(out.contains("\"nope\" is not configured"), "{out}");
}

#[tokio::test]
async fn the_order_cannot_be_told_while_delta_and_id_order_agree() {
    // Fresh data: record i has the i-th timestamp, so a source that ignored `order` and listed
    // by ID would answer the same.
    let sim = testkit::sim::start(SimConfig {
        people: N,
        ..SimConfig::default()
    })
    .await;
    let cfg = config(&sim, |_| {});
    let p = probe_people(&cfg).await;
    let order = by_name(&p, "order");
    assert_eq!(order.verdict, Verdict::CannotCheck, "{}", show(&p));
    assert!(order.detail.contains("cannot be told"), "{}", show(&p));
    for c in p.checks.iter().filter(|c| c.name != "order") {
        assert_eq!(c.verdict, Verdict::Pass, "{}", show(&p));
    }
    assert_eq!(exit_code(std::slice::from_ref(&p)), UNDECIDED);
}

#[tokio::test]
async fn the_page_from_a_later_bound_decides_the_order() {
    // Record 120 moved last: the first page is 1..=100 in both orders, the filtered page is not.
    for (flags, verdict) in [
        (Misbehave::default(), Verdict::Pass),
        (
            Misbehave {
                ignore_order: true,
                ..Misbehave::default()
            },
            Verdict::Fail,
        ),
    ] {
        let sim = testkit::sim::start(SimConfig {
            people: N,
            ..SimConfig::default()
        })
        .await;
        sim.update(Entity::People, 120, None);
        sim.set_misbehave(flags);
        let p = probe_people(&config(&sim, |_| {})).await;
        assert_eq!(
            by_name(&p, "order").verdict,
            verdict,
            "{flags:?}\n{}",
            show(&p)
        );
        if verdict == Verdict::Fail {
            assert!(
                by_name(&p, "order")
                    .detail
                    .contains("with where[updated_at][gte]="),
                "{}",
                show(&p)
            );
        }
    }
}
