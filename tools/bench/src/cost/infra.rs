//! What the deployed stack says, read at run time so that the model cannot drift from it:
//! each function's `MemorySize` and the delta schedule (`template.yaml`), the webhook API's
//! access-log format, and the reconciliation state machine's states (`infra/reconcile.asl.json`),
//! against which a run's path of states is checked before its transitions are counted.

use std::collections::{BTreeMap, HashMap};

pub const TEMPLATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../template.yaml");
pub const ASL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../infra/reconcile.asl.json"
);

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn is_content(line: &str) -> bool {
    let t = line.trim_start();
    !t.is_empty() && !t.starts_with('#')
}

/// The lines of the block that `header` (a line, trimmed, e.g. `Globals:`) opens at `at`
/// indentation: up to the next line at that indentation or less.
fn block<'a>(text: &'a str, header: &str, at: usize) -> Option<Vec<&'a str>> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| indent(l) == at && l.trim() == header)?;
    Some(
        lines[start + 1..]
            .iter()
            .take_while(|l| !is_content(l) || indent(l) > at)
            .copied()
            .collect(),
    )
}

fn value_of<'a>(lines: &[&'a str], key: &str) -> Option<&'a str> {
    lines.iter().find_map(|l| {
        l.trim_start()
            .strip_prefix(key)
            .and_then(|r| r.strip_prefix(':'))
            .map(str::trim)
    })
}

/// Each function's memory in MB, by its binary's name: its own `MemorySize`, or the Globals'.
pub fn memory_sizes(template: &str, binaries: &[&str]) -> Result<BTreeMap<String, u32>, String> {
    let globals = block(template, "Globals:", 0).ok_or("template.yaml: no Globals")?;
    let global_mb: u32 = value_of(&globals, "MemorySize")
        .and_then(|v| v.parse().ok())
        .ok_or("template.yaml: no Globals.Function.MemorySize")?;
    let resources = block(template, "Resources:", 0).ok_or("template.yaml: no Resources")?;
    let mut out = BTreeMap::new();
    for bin in binaries {
        // The resource (a key at indentation 2) whose metadata names the binary.
        let mut current: Vec<&str> = Vec::new();
        let mut found = None;
        for line in resources.iter().chain(std::iter::once(&"  End:")) {
            if is_content(line) && indent(line) == 2 {
                if current.iter().any(|l| l.trim() == format!("Binary: {bin}")) {
                    found = Some(std::mem::take(&mut current));
                    break;
                }
                current.clear();
            }
            current.push(line);
        }
        let res = found.ok_or_else(|| format!("template.yaml: no function with Binary: {bin}"))?;
        let mb = match value_of(&res, "MemorySize") {
            Some(v) => v
                .parse()
                .map_err(|_| format!("template.yaml: {bin}'s MemorySize {v:?} is not a number"))?,
            None => global_mb,
        };
        out.insert((*bin).to_owned(), mb);
    }
    Ok(out)
}

/// Delta runs a month at the template's default schedule (`rate(N minutes|hours)`, a 30-day
/// month); `None` for another expression.
pub fn delta_runs_per_month(template: &str) -> Option<(String, f64)> {
    let b = block(template, "DeltaSchedule:", 2)?;
    let rate = value_of(&b, "Default")?.trim_matches('"').to_owned();
    let inner = rate.strip_prefix("rate(")?.strip_suffix(')')?;
    let (n, unit) = inner.split_once(' ')?;
    let n: f64 = n.parse().ok()?;
    let minutes = match unit.trim_end_matches('s') {
        "minute" => n,
        "hour" => n * 60.0,
        "day" => n * 1440.0,
        _ => return None,
    };
    Some((rate.clone(), 30.0 * 1440.0 / minutes))
}

/// The webhook API's access-log line for one request: the template's `Format` with each
/// `$context.*` variable replaced by a value of typical length (`-` for an empty one).
pub fn access_log_line(template: &str) -> Result<String, String> {
    let api = block(template, "WebhookApi:", 2).ok_or("template.yaml: no WebhookApi")?;
    let start = api
        .iter()
        .position(|l| l.trim() == "Format: >-")
        .ok_or("template.yaml: WebhookApi has no folded access-log Format")?;
    let at = indent(api[start]);
    // A folded scalar: its lines joined by spaces.
    // The scalar's lines: up to the first line (a comment too) not indented under the key.
    let format = api[start + 1..]
        .iter()
        .take_while(|l| l.trim().is_empty() || indent(l) > at)
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let samples: HashMap<&str, &str> = HashMap::from([
        ("requestId", "Hn4Wbj9ZoAMEJpQ="),
        ("requestTime", "03/Dec/2026:06:03:12 +0000"),
        ("httpMethod", "POST"),
        ("routeKey", "POST /webhooks"),
        ("status", "200"),
        ("protocol", "HTTP/1.1"),
        ("responseLength", "22"),
        ("responseLatency", "31"),
        ("integrationStatus", "200"),
        ("integrationLatency", "29"),
        ("integrationErrorMessage", "-"),
        ("error.message", "-"),
        ("identity.sourceIp", "34.201.114.72"),
        (
            "identity.userAgent",
            "PlanningCenter-Webhooks/1.0 (+https://api.planningcenteronline.com)",
        ),
    ]);
    let mut line = String::with_capacity(format.len() + 64);
    let mut rest = format.as_str();
    while let Some(i) = rest.find("$context.") {
        line.push_str(&rest[..i]);
        let after = &rest[i + "$context.".len()..];
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
            .unwrap_or(after.len());
        let name = after[..end].trim_end_matches('.');
        line.push_str(samples.get(name).copied().unwrap_or("-"));
        rest = &after[name.len()..];
    }
    line.push_str(rest);
    if !line.starts_with('{') {
        return Err(format!(
            "template.yaml: unexpected access-log format {format:?}"
        ));
    }
    Ok(line)
}

/// One state of the state machine, nested states flattened.
#[derive(Debug, Default)]
struct State {
    kind: String,
    next: Vec<String>,
    end: bool,
    /// A Map's (or Parallel's first branch's) first state.
    start: Option<String>,
    /// The Map or Parallel state this one runs inside.
    parent: Option<String>,
    /// A Task invoking the Lambda function.
    lambda: bool,
}

/// The reconciliation state machine, read from its definition.
#[derive(Debug)]
pub struct StateMachine {
    start: String,
    states: HashMap<String, State>,
}

impl StateMachine {
    pub fn parse(text: &str) -> Result<Self, String> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("reconcile.asl.json: {e}"))?;
        let mut states = HashMap::new();
        collect(&v, None, &mut states)?;
        let start = v["StartAt"]
            .as_str()
            .ok_or("reconcile.asl.json: no StartAt")?
            .to_owned();
        Ok(StateMachine { start, states })
    }

    fn state(&self, name: &str) -> Result<&State, String> {
        self.states
            .get(name)
            .ok_or_else(|| format!("reconcile.asl.json has no state {name:?}"))
    }

    /// Whether the execution can go from `a` to `b`: a `Next`, a Choice's target, a Catch, a
    /// Map entering its first state, or the end of an iteration going to the next iteration or
    /// past the Map.
    fn can_follow(&self, a: &str, b: &str) -> Result<bool, String> {
        let s = self.state(a)?;
        if s.next.iter().any(|n| n == b) || s.start.as_deref() == Some(b) {
            return Ok(true);
        }
        let mut ends = s.end;
        let mut parent = s.parent.clone();
        while ends {
            let Some(p) = parent else { break };
            let m = self.state(&p)?;
            if m.start.as_deref() == Some(b) || m.next.iter().any(|n| n == b) {
                return Ok(true);
            }
            ends = m.end;
            parent = m.parent.clone();
        }
        Ok(false)
    }

    /// Checks `path` (the states one execution enters, in order) against the definition, and
    /// returns its state transitions and its Lambda invocations.
    pub fn walk(&self, path: &[&str]) -> Result<(u64, u64), String> {
        if path.first() != Some(&self.start.as_str()) {
            return Err(format!("an execution starts at {:?}", self.start));
        }
        for w in path.windows(2) {
            if !self.can_follow(w[0], w[1])? {
                return Err(format!(
                    "reconcile.asl.json: no transition from {:?} to {:?}",
                    w[0], w[1]
                ));
            }
        }
        let last = self.state(path[path.len() - 1])?;
        if !(last.kind == "Succeed" || last.kind == "Fail" || (last.end && last.parent.is_none())) {
            return Err("the path does not end the execution".into());
        }
        let mut lambda = 0;
        for s in path {
            lambda += u64::from(self.state(s)?.lambda);
        }
        Ok((path.len() as u64, lambda))
    }
}

fn collect(
    machine: &serde_json::Value,
    parent: Option<&str>,
    out: &mut HashMap<String, State>,
) -> Result<(), String> {
    let Some(states) = machine["States"].as_object() else {
        return Err("reconcile.asl.json: a States object is missing".into());
    };
    for (name, s) in states {
        let text = |k: &str| s[k].as_str().map(str::to_owned);
        let mut next: Vec<String> = text("Next").into_iter().collect();
        next.extend(text("Default"));
        for list in ["Choices", "Catch"] {
            if let Some(items) = s[list].as_array() {
                next.extend(
                    items
                        .iter()
                        .filter_map(|c| c["Next"].as_str().map(str::to_owned)),
                );
            }
        }
        let inner = s
            .get("ItemProcessor")
            .or_else(|| s.get("Iterator"))
            .or_else(|| s["Branches"].get(0));
        let state = State {
            kind: text("Type").unwrap_or_default(),
            next,
            end: s["End"].as_bool() == Some(true),
            start: inner.and_then(|i| i["StartAt"].as_str().map(str::to_owned)),
            parent: parent.map(str::to_owned),
            lambda: text("Type").as_deref() == Some("Task")
                && text("Resource").is_some_and(|r| r.contains(":lambda:invoke")),
        };
        if out.insert(name.clone(), state).is_some() {
            return Err(format!("reconcile.asl.json: state {name:?} twice"));
        }
        if let Some(i) = inner {
            collect(i, Some(name), out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &str) -> String {
        std::fs::read_to_string(path).expect("readable")
    }

    #[test]
    fn memory_sizes_come_from_each_function_or_the_globals() {
        let t = "Globals:\n  Function:\n    MemorySize: 256\nResources:\n  A:\n    Metadata:\n      BuildProperties:\n        Binary: a\n    Properties:\n      MemorySize: 512\n  B:\n    Metadata:\n      BuildProperties:\n        Binary: b\n    Properties:\n      Timeout: 3\n";
        let m = memory_sizes(t, &["a", "b"]).expect("parses");
        assert_eq!(m["a"], 512);
        assert_eq!(m["b"], 256, "the Globals' when the function sets none");
        assert!(
            memory_sizes(t, &["c"]).is_err(),
            "an unknown binary is an error"
        );
        // The real template: every function found.
        let real = memory_sizes(
            &read(TEMPLATE),
            &["delta-sync", "webhook-ingest", "sync-worker", "reconcile"],
        )
        .expect("template.yaml parses");
        assert!(
            real.values().all(|&mb| (128..=10_240).contains(&mb)),
            "{real:?}"
        );
    }

    #[test]
    fn the_template_gives_a_schedule_and_an_access_log_line() {
        let t = read(TEMPLATE);
        let (_, runs) = delta_runs_per_month(&t).expect("a rate() schedule");
        assert!(runs > 0.0);
        let line = access_log_line(&t).expect("a format");
        assert!(!line.contains("$context"), "{line}");
        serde_json::from_str::<serde_json::Value>(&line).expect("the sample line is JSON");
    }

    #[test]
    fn a_path_of_states_is_checked_against_the_state_machine() {
        let m = StateMachine::parse(&read(ASL)).expect("the definition parses");
        let mut path = vec!["Start", "Resuming", "Plan", "Runs", "Source", "SourceDone"];
        path.push("Destinations");
        path.extend(["Destination"; 16]);
        path.extend([
            "Diff",
            "Guard",
            "NeedsApproval",
            "Apply",
            "ApplyDone",
            "Finish",
        ]);
        path.extend(["AnyRuns", "CheckRuns", "Summarise", "AnyRunFailed", "Done"]);
        let (transitions, lambda) = m.walk(&path).expect("a valid execution");
        assert_eq!(transitions, path.len() as u64);
        assert_eq!(
            lambda,
            1 + 1 + 16 + 1 + 1 + 1 + 1,
            "plan, source, shards, diff, guard, apply, finish"
        );
        let skipped: Vec<&str> = path.iter().copied().filter(|s| *s != "Diff").collect();
        assert!(m.walk(&skipped).is_err(), "Destination cannot go to Guard");
        assert!(
            m.walk(&path[..path.len() - 1]).is_err(),
            "an execution ends at Done"
        );
    }
}
