//! The fuzz targets under CI's budget (a fixed seed, so a failure replays), and the negative
//! controls: with a protection switched off, the same target finds the violation.

use super::*;

/// CI's seed: fixed, so that `cargo test` is deterministic and a failure replays.
const CI_SEED: u64 = 0x5EED_0013;

fn holds(outcome: Outcome) {
    if let Some(f) = outcome.failure {
        panic!("{f}");
    }
}

fn ci(cases: u32) -> Budget {
    Budget {
        cases,
        seed: CI_SEED,
    }
}

#[test]
fn webhook_verification_accepts_exactly_what_a_configured_secret_signed() {
    holds(webhook::run_verify(ci(512)));
}

#[test]
fn webhook_extraction_queues_only_valid_ids_and_accounts_for_every_event() {
    holds(webhook::run_extract(ci(512)));
}

#[test]
fn config_parser_answers_a_config_or_an_error_naming_the_field() {
    holds(config::run(ci(384)));
}

#[test]
fn json_scanner_agrees_with_serde_json_on_nasty_documents() {
    holds(json::run(ci(1024)));
}

#[test]
fn run_reader_gives_the_pairs_written_or_a_typed_error() {
    holds(runs::run(ci(512)));
}

#[test]
fn envelopes_round_trip_and_any_body_decodes_or_is_refused() {
    holds(envelope::run(ci(512)));
}

#[test]
fn step_inputs_from_arbitrary_json_never_panic() {
    holds(steps::run(ci(256)));
}

#[test]
fn every_target_is_listed_once() {
    let mut names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), TARGETS.len());
    for t in TARGETS {
        assert_eq!((t.run)(ci(2)).target, t.name);
    }
}

/// Negative control of the run checksum: a reader that does not compare it gives other pairs
/// for damaged bytes, and the target says so (with the minimal damage).
#[test]
fn without_the_checksum_the_run_reader_target_finds_other_pairs() {
    crate::setdiff::runs::SKIP_CHECKSUM.with(|s| s.set(true));
    let outcome = runs::run(ci(512));
    crate::setdiff::runs::SKIP_CHECKSUM.with(|s| s.set(false));
    let failure = outcome.failure.expect("damage read as other pairs");
    assert!(failure.contains("differ from the"), "{failure}");
    assert!(failure.contains("minimal input"), "{failure}");
}

/// Negative control of the hex-digit check: with hex decoded by `from_str_radix` alone, the
/// verification target finds a signature spelled with a `+` sign accepted.
#[test]
fn without_the_hex_digit_check_the_verify_target_finds_a_second_spelling_accepted() {
    crate::webhook::signature::LENIENT_HEX.with(|s| s.set(true));
    let outcome = webhook::run_verify(ci(512));
    crate::webhook::signature::LENIENT_HEX.with(|s| s.set(false));
    let failure = outcome.failure.expect("a `+` spelling accepted");
    assert!(
        failure.contains("not signed by a configured secret"),
        "{failure}"
    );
    assert!(failure.contains("PlusSign"), "{failure}");
}

// Regressions found by these targets.

/// `fuzz::webhook`: `+f` decoded as `0f` (`u8::from_str_radix` takes a sign), so that a
/// signature had a second spelling the sender never sent.
#[test]
fn a_hex_signature_with_a_sign_is_refused() {
    use crate::config::{SignatureEncoding, SignatureScheme};
    use crate::webhook::signature::{SignatureError, Verifier, sign};
    let scheme = SignatureScheme::HmacHeader {
        header: "x-sig".into(),
        encoding: SignatureEncoding::Hex,
    };
    let v = Verifier::new(scheme.clone(), &["s3cret"]).unwrap();
    // A body whose MAC's hex starts with `0`.
    let (body, hex) = (0u32..)
        .map(|i| {
            let body = format!("{{\"n\":{i}}}");
            let hex = sign(&scheme, "s3cret", body.as_bytes(), "", 0).unwrap()[0]
                .1
                .clone();
            (body, hex)
        })
        .find(|(_, h)| h.starts_with('0'))
        .unwrap();
    let headers = |value: &str| {
        let mut h = http::HeaderMap::new();
        h.insert("x-sig", value.parse().unwrap());
        h
    };
    assert!(v.verify(&headers(&hex), body.as_bytes(), 0).is_ok());
    let signed = format!("+{}", &hex[1..]);
    assert!(matches!(
        v.verify(&headers(&signed), body.as_bytes(), 0),
        Err(SignatureError::MalformedHeader { .. })
    ));
}

/// `fuzz::json`: `//` was read as `/` (every leading slash stripped), where RFC 6901 and
/// `serde_json` read the key "" inside the key "".
#[test]
fn a_pointer_keeps_its_empty_segments() {
    use crate::source::parse::pointer_segments;
    assert_eq!(pointer_segments("//"), ["", ""]);
    assert_eq!(pointer_segments("/"), [""]);
    assert_eq!(pointer_segments("//a"), ["", "a"]);
    assert_eq!(pointer_segments("/a/b"), ["a", "b"]);
    assert!(pointer_segments("").is_empty());
}

/// `fuzz::config`: a missing field of an entity was reported as field `-`.
#[test]
fn a_missing_entity_field_is_named() {
    let text = crate::config::EMBEDDED.replacen("name = \"people\"\n", "", 1);
    assert_ne!(text, crate::config::EMBEDDED);
    match crate::config::Config::from_toml_str(&text, std::path::Path::new("x.toml")) {
        Err(crate::error::ConfigError::Invalid { field, .. }) => assert_eq!(field, "name"),
        other => panic!("{other:?}"),
    }
}

// The generators reach the cases the properties are about (else a target holds vacuously).

fn sample<S: proptest::strategy::Strategy>(strategy: S, n: usize) -> Vec<S::Value> {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    (0..n)
        .map(|_| strategy.new_tree(&mut runner).expect("a value").current())
        .collect()
}

#[test]
fn json_cases_are_valid_and_invalid_deep_and_long() {
    let (mut valid, mut deep, mut long) = (0, 0, 0);
    let cases = sample(json::cases(), 1000);
    for c in &cases {
        let mut text = String::new();
        json::render(&c.doc, &mut text);
        valid += usize::from(crate::core::json::validate(&text).is_ok());
        deep += usize::from(text.starts_with("[[[[[[[[[[") || text.starts_with("{\"k\":{\"k\":"));
        long += usize::from(text.len() > 2000);
    }
    assert!((200..800).contains(&valid), "{valid} of 1000 valid");
    assert!(deep > 50 && long > 50, "{deep} deep, {long} long");
}

#[test]
fn extract_cases_queue_ignore_and_refuse_events() {
    let cfg = crate::config::Config::from_toml_str(
        crate::config::EMBEDDED,
        std::path::Path::new("t.toml"),
    )
    .unwrap();
    let map = crate::webhook::extract::EventMap::new(&cfg);
    let pco = cfg.webhooks.clone().unwrap();
    let (mut queued, mut ignored, mut malformed) = (0, 0, 0);
    for c in sample(webhook::extract_cases(), 500) {
        if c.standard || c.shape != 0 {
            continue;
        }
        let events: Vec<serde_json::Value> = c
            .events
            .iter()
            .map(|e| {
                serde_json::json!({"id": e.event_id, "attributes": {"name": e.name,
                    "payload": serde_json::json!({"data": {"id": e.record_id}}).to_string()}})
            })
            .collect();
        let body = serde_json::json!({ "data": events }).to_string();
        if let Ok(out) = crate::webhook::extract::extract(&pco, &map, body.as_bytes(), None) {
            queued += out.events.len();
            ignored += out.ignored.len();
            malformed += out.malformed.len();
        }
    }
    assert!(
        queued > 100 && ignored > 20 && malformed > 100,
        "{queued} queued, {ignored} ignored, {malformed} malformed"
    );
}

#[test]
fn verify_cases_are_accepted_and_refused() {
    let cases = sample(webhook::verify_cases(), 600);
    let signed = cases
        .iter()
        .filter(|c| matches!(c.signer, webhook::Signer::Configured(_)))
        .filter(|c| matches!(c.tamper, webhook::Tamper::None))
        .count();
    assert!(
        signed > 100,
        "{signed} untampered deliveries signed by a configured secret"
    );
}

/// `fuzz::config`: an entity with an empty name was reported as entity `` (nothing to find it
/// by); it is shown by position, as an unnamed entity is elsewhere.
#[test]
fn an_empty_entity_name_is_shown_by_position() {
    let text = crate::config::EMBEDDED.replacen("name = \"donations\"", "name = \"\"", 1);
    assert_ne!(text, crate::config::EMBEDDED);
    match crate::config::Config::from_toml_str(&text, std::path::Path::new("x.toml")) {
        Err(crate::error::ConfigError::Invalid { entity, field, .. }) => {
            assert_eq!((entity.as_str(), field.as_str()), ("#1", "name"))
        }
        other => panic!("{other:?}"),
    }
}

/// `fuzz::config`: a type error in an entity whose name is empty was reported as entity ``.
#[test]
fn a_type_error_in_an_unnamed_entity_is_shown_by_position() {
    let text = crate::config::EMBEDDED
        .replacen("name = \"people\"", "name = \"\"", 1)
        .replacen("supports_webhooks = true", "supports_webhooks = \"\"", 1);
    match crate::config::Config::from_toml_str(&text, std::path::Path::new("x.toml")) {
        Err(crate::error::ConfigError::Invalid { entity, field, .. }) => {
            assert_eq!(
                (entity.as_str(), field.as_str()),
                ("#0", "supports_webhooks")
            )
        }
        other => panic!("{other:?}"),
    }
}

/// `fuzz::json` (an oracle fix, not a scanner bug): 128 levels holding a number beyond `f64`
/// are refused by the scanner for their depth, as `serde_json` refuses the depth when the
/// number does not stop it first.
#[test]
fn depth_is_refused_even_beside_a_number_out_of_range() {
    let case = json::Case {
        doc: json::Doc::Deep(
            126,
            false,
            Box::new(json::Doc::Arr(
                vec![
                    json::Doc::Num("0.1e310".into()),
                    json::Doc::Obj(Vec::new(), ""),
                ],
                "",
            )),
        ),
        edits: Vec::new(),
    };
    json::check(case).unwrap();
    let text = "[".repeat(128) + &"]".repeat(128);
    assert!(crate::core::json::validate(&text).is_err());
}
