//! The configuration parser with arbitrary TOML: the embedded configuration edited line by line
//! (lines dropped, duplicated, values swapped for nasty ones, tables and keys added, the text
//! cut), and text that is not TOML at all. It must return a configuration or a
//! `ConfigError::Invalid` naming the file and a field (`-` only for text that is not TOML),
//! never panic.

use super::{Budget, Outcome, drive, re};
use crate::config::{Config, EMBEDDED};
use crate::error::ConfigError;
use crate::webhook::extract::EventMap;
use proptest::prelude::*;
use proptest::sample::Index;
use std::path::Path;

const VALUES: &[&str] = &[
    "\"\"",
    "-1",
    "0",
    "18446744073709551616",
    "9223372036854775807",
    "\"x\"",
    "true",
    "[1, 2]",
    "[]",
    "{ a = 1 }",
    "{}",
    "\"/\"",
    "\"~\"",
    "\"/a/~2\"",
    "1.5",
    "nan",
    "-inf",
    "\"\\u0000\"",
    "'''a\nb'''",
    "\"http://\"",
    "\"ftp://x\"",
    "\"http://10.0.0.1\"",
    "\"https://example.com/a b\"",
    "1979-05-27T07:32:00Z",
    "\"hmac_header\"",
    "{ kind = \"standard_webhooks\" }",
    "{ kind = \"standard_webhooks\", tolerance_seconds = -1 }",
    "{ kind = \"hmac_header\", header = \"\", encoding = \"hex\" }",
    "{ kind = \"hmac_header\", header = \"bad header\", encoding = \"rot13\" }",
    "{ env = \"\" }",
    "{ kind = \"bearer\" }",
    "\"upsert\"",
    "\"delete\"",
    "\"nope\"",
    "1000000000000",
    "\"people\"",
];

const LINES: &[&str] = &[
    "[[entity]]",
    "name = \"people\"",
    "name = \"\"",
    "unknown = 1",
    "[webhooks]",
    "[source]",
    "[source.rate_limit]",
    "[source.rate_budget]",
    "[source.rate_headers]",
    "lateness_ms = 99999",
    "[entity.webhook_events]",
    "\"x\" = \"upsert\"",
    "\"people.v2.events.person.created\" = \"delete\"",
    "\"x\" = \"nope\"",
    "id_pointer = \"id\"",
    "delta_pointer = \"\"",
    "page_size = 0",
    "supports_webhooks = \"yes\"",
    "[[webhooks]]",
    "a.b.c = 1",
];

/// One edit of the embedded file.
#[derive(Debug, Clone)]
pub enum Edit {
    DropLine(Index),
    DupLine(Index),
    /// Replace the value of a `key = value` line.
    Value(Index, String),
    Insert(Index, String),
    /// Cut the text at a character.
    Truncate(Index),
    Char(Index, char),
}

#[derive(Debug, Clone)]
pub enum Case {
    Edited(Vec<Edit>),
    Text(String),
}

fn edit() -> impl Strategy<Value = Edit> {
    let value = prop_oneof![
        4 => prop::sample::select(VALUES).prop_map(str::to_owned),
        1 => re("[ -~]{0,20}"),
    ];
    let line = prop_oneof![
        4 => prop::sample::select(LINES).prop_map(str::to_owned),
        1 => re("[ -~]{0,40}"),
    ];
    prop_oneof![
        3 => any::<Index>().prop_map(Edit::DropLine),
        1 => any::<Index>().prop_map(Edit::DupLine),
        6 => (any::<Index>(), value).prop_map(|(i, v)| Edit::Value(i, v)),
        2 => (any::<Index>(), line).prop_map(|(i, l)| Edit::Insert(i, l)),
        1 => any::<Index>().prop_map(Edit::Truncate),
        1 => (any::<Index>(), any::<char>()).prop_map(|(i, c)| Edit::Char(i, c)),
    ]
}

pub fn cases() -> impl Strategy<Value = Case> {
    prop_oneof![
        6 => prop::collection::vec(edit(), 0..5).prop_map(Case::Edited),
        1 => any::<String>().prop_map(Case::Text),
        1 => re("(\\[\\[entity\\]\\]\n|\\[webhooks\\]\n|[a-z_]{1,8} = (\"[a-z/]{0,5}\"|[0-9]{1,3}|true)\n){0,12}")
            .prop_map(Case::Text),
    ]
}

fn text_of(case: &Case) -> String {
    let edits = match case {
        Case::Text(t) => return t.clone(),
        Case::Edited(e) => e,
    };
    let mut lines: Vec<String> = EMBEDDED.lines().map(str::to_owned).collect();
    for e in edits {
        match e {
            Edit::DropLine(i) if !lines.is_empty() => {
                lines.remove(i.index(lines.len()));
            }
            Edit::DupLine(i) if !lines.is_empty() => {
                let at = i.index(lines.len());
                let l = lines[at].clone();
                lines.insert(at, l);
            }
            Edit::Value(i, v) => {
                let keyed: Vec<usize> = (0..lines.len())
                    .filter(|&j| !lines[j].starts_with('#') && lines[j].contains(" = "))
                    .collect();
                if !keyed.is_empty() {
                    let at = keyed[i.index(keyed.len())];
                    let key = lines[at].split(" = ").next().unwrap_or("").to_owned();
                    lines[at] = format!("{key} = {v}");
                }
            }
            Edit::Insert(i, l) => {
                let at = i.index(lines.len() + 1);
                lines.insert(at, l.clone());
            }
            Edit::Truncate(i) => {
                let text = lines.join("\n");
                let chars: Vec<char> = text.chars().collect();
                let cut: String = chars[..i.index(chars.len() + 1)].iter().collect();
                lines = cut.lines().map(str::to_owned).collect();
            }
            Edit::Char(i, c) => {
                let text = lines.join("\n");
                let mut chars: Vec<char> = text.chars().collect();
                if !chars.is_empty() {
                    let at = i.index(chars.len());
                    chars[at] = *c;
                }
                let text: String = chars.into_iter().collect();
                lines = text.lines().map(str::to_owned).collect();
            }
            _ => {}
        }
    }
    lines.join("\n")
}

const FILE: &str = "fuzz/endpoints.toml";

/// The property of one configuration text.
pub fn check(case: Case) -> Result<(), String> {
    let text = text_of(&case);
    match Config::from_toml_str(&text, Path::new(FILE)) {
        Ok(cfg) => {
            // What the functions do with a configuration at start-up must not panic either.
            let _ = EventMap::new(&cfg);
            let _ = cfg.webhooks();
            let names = cfg
                .entity_names(None)
                .map_err(|e| format!("entity_names: {e}"))?;
            for n in &names {
                cfg.entity(n)
                    .ok_or_else(|| format!("entity {n} listed, not found"))?;
            }
            Ok(())
        }
        Err(ConfigError::Invalid {
            file,
            entity,
            field,
            message,
        }) => {
            if file != Path::new(FILE) {
                return Err(format!("error names file {}", file.display()));
            }
            if entity.is_empty() || field.is_empty() || message.is_empty() {
                return Err(format!(
                    "error names no field: entity {entity:?}, field {field:?}, message {message:?}"
                ));
            }
            if field == "-" && !message.starts_with("not valid TOML") {
                return Err(format!("valid TOML, and no field named: {message}"));
            }
            Ok(())
        }
        Err(e) => Err(format!("not a typed configuration error: {e:?}")),
    }
}

pub fn run(budget: Budget) -> Outcome {
    drive("config", budget, cases(), check)
}
