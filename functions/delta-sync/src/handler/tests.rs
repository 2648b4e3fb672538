use super::*;

#[test]
fn sample_events_parse() {
    let bare: serde_json::Value = serde_json::from_str(include_str!(
        "../../../../events/delta-sync/all-entities.json"
    ))
    .unwrap();
    assert_eq!(parse_input(bare).unwrap(), Input { entity: None });
    let one: serde_json::Value = serde_json::from_str(include_str!(
        "../../../../events/delta-sync/one-entity.json"
    ))
    .unwrap();
    assert_eq!(
        parse_input(one).unwrap(),
        Input {
            entity: Some("people".into())
        }
    );
    let sched: serde_json::Value = serde_json::from_str(include_str!(
        "../../../../events/delta-sync/scheduled-event.json"
    ))
    .unwrap();
    assert_eq!(parse_input(sched).unwrap(), Input { entity: None });
    assert!(parse_input(serde_json::json!({"entity": 3})).is_err());
    assert!(parse_input(serde_json::json!({"entty": "people"})).is_err());
}
