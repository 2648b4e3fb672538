//! `syncctl check-source`: probes the configured source (the configuration the engine loads:
//! `SYNC_CONFIG` or the embedded `infra/endpoints.toml`, `SOURCE_BASE_URL`, the secret from the
//! variable `auth` names) and says per entity and per check whether the source honours the
//! filter, the order, the page size, the pagination parameter, the ID filter, `get_by_id` and
//! JSON 404s. The probing is `shared::source::probe`; this module parses, prints and exits.
//!
//! Exit codes: 0 every check passed; 1 a check failed (or the configuration does not load);
//! 3 the source cannot be reached; 4 nothing failed but some check could not be decided
//! (too few records). Clap's usage errors are 2.

use clap::Args;
use serde_json::{Value, json};
use shared::Config;
use shared::source::SourceClient;
use shared::source::probe::{EntityProbe, ProbeError, Verdict};
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct CheckSourceArgs {
    /// One entity (default: every configured entity).
    #[arg(long)]
    pub entity: Option<String>,
    /// Print one JSON object (per entity, per check: name, ok, status, detail, field).
    #[arg(long)]
    pub json: bool,
}

/// Every check passed.
pub const PASSED: u8 = 0;
/// A check failed, or the configuration does not load.
pub const FAILED: u8 = 1;
/// The source cannot be reached.
pub const UNREACHABLE: u8 = 3;
/// Nothing failed, but some check could not be decided.
pub const UNDECIDED: u8 = 4;

pub async fn run(args: CheckSourceArgs) -> ExitCode {
    let prepared = Config::load()
        .map_err(|e| e.to_string())
        .and_then(|config| {
            let secret =
                shared::source::secret_from_env(&config.source.auth).map_err(|e| e.to_string())?;
            let client = SourceClient::new(&config, secret).map_err(|e| e.to_string())?;
            Ok((config, client))
        });
    let (config, client) = match prepared {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(FAILED);
        }
    };
    let (code, out) = check(&config, &client, args.entity.as_deref(), args.json).await;
    match code {
        UNREACHABLE if !args.json => eprint!("{out}"),
        _ => print!("{out}"),
    }
    ExitCode::from(code)
}

/// Probes `entity` (or every entity) and renders the result: the exit code and the text.
pub async fn check(
    config: &Config,
    client: &SourceClient,
    entity: Option<&str>,
    as_json: bool,
) -> (u8, String) {
    let names = match config.entity_names(entity) {
        Ok(n) => n,
        Err(e) => {
            return (
                FAILED,
                format!(
                    "error: entity {e:?} is not configured in {}\n",
                    config.file.display()
                ),
            );
        }
    };
    let mut probes = Vec::new();
    for name in names {
        match client.probe(&name).await {
            Ok(p) => probes.push(p),
            Err(err @ ProbeError::Unreachable(_)) => {
                let msg = format!("{name}: {err}");
                let out = if as_json {
                    format!(
                        "{:#}\n",
                        json!({"source": config.source.name, "ok": false, "unreachable": msg})
                    )
                } else {
                    format!("error: {msg}\n")
                };
                return (UNREACHABLE, out);
            }
            Err(err) => return (FAILED, format!("error: {name}: {err}\n")),
        }
    }
    let code = exit_code(&probes);
    let out = if as_json {
        format!("{:#}\n", to_json(config, &probes))
    } else {
        text(config, &probes)
    };
    (code, out)
}

pub fn exit_code(probes: &[EntityProbe]) -> u8 {
    if probes.iter().any(EntityProbe::failed) {
        FAILED
    } else if probes.iter().any(EntityProbe::undecided) {
        UNDECIDED
    } else {
        PASSED
    }
}

fn label(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "ok",
        Verdict::Fail => "FAIL",
        Verdict::CannotCheck => "cannot check",
    }
}

/// The report for people: one block per entity, one line per check, the field to fix under a
/// failure, and a closing line.
pub fn text(config: &Config, probes: &[EntityProbe]) -> String {
    let mut out = format!(
        "check-source: {} ({})\n",
        config.source.name,
        config.file.display()
    );
    let mut failed = Vec::new();
    let mut undecided = 0;
    for p in probes {
        out.push_str(&format!("\n{} ({})\n", p.entity, p.url));
        for c in &p.checks {
            out.push_str(&format!(
                "  {:<12} {:<11} {}\n",
                label(c.verdict),
                c.name,
                c.detail
            ));
            match c.verdict {
                Verdict::Fail => {
                    if let Some(f) = &c.field {
                        out.push_str(&format!("  {:<12} {:<11} fix: {f}\n", "", ""));
                    }
                    failed.push(format!("{}: {}", p.entity, c.name));
                }
                Verdict::CannotCheck => undecided += 1,
                Verdict::Pass => {}
            }
        }
    }
    out.push('\n');
    if !failed.is_empty() {
        out.push_str(&format!(
            "{} check(s) failed ({}). Fix the fields named above in {} and run `syncctl \
             check-source` again.\n",
            failed.len(),
            failed.join(", "),
            config.file.display()
        ));
    } else if undecided > 0 {
        out.push_str(&format!(
            "No check failed, but {undecided} could not be decided (too few records): not a \
             pass.\n"
        ));
    } else {
        out.push_str("Every check passed.\n");
    }
    out
}

/// The report for scripts: `{"source", "ok", "entities": [{"entity", "url", "ok", "checks":
/// [{"name", "ok", "status", "detail", "field"}]}]}`; `ok` is true only for a pass.
pub fn to_json(config: &Config, probes: &[EntityProbe]) -> Value {
    let entities: Vec<Value> = probes
        .iter()
        .map(|p| {
            let checks: Vec<Value> = p
                .checks
                .iter()
                .map(|c| {
                    json!({
                        "name": c.name,
                        "ok": c.verdict == Verdict::Pass,
                        "status": c.verdict.as_str(),
                        "detail": c.detail,
                        "field": c.field,
                    })
                })
                .collect();
            json!({
                "entity": p.entity,
                "url": p.url,
                "ok": !p.failed() && !p.undecided(),
                "checks": checks,
            })
        })
        .collect();
    json!({
        "source": config.source.name,
        "ok": exit_code(probes) == PASSED,
        "exit_code": exit_code(probes),
        "entities": entities,
    })
}

#[cfg(test)]
mod tests;
