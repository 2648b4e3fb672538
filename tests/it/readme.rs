//! The README cannot drift: every shell block in it carries a marker, and the runnable ones are
//! run here, each in a fresh copy of the repository, the way a reader pastes them.
//!
//! A marker is an HTML comment (invisible when rendered) on the line just before the fence:
//!
//! ```text
//! <!-- runnable: timeout=SECONDS[; expect "TEXT"]...[; skip "PREFIX": REASON]...[; simulator] -->
//! <!-- not-runnable: REASON[; free text] -->
//! ```
//!
//! REASON is one of [`Reason`]'s: `runs the tests themselves`, `serves until stopped`, `needs an
//! AWS account`, `release build`. `expect`: the block's output (stdout and stderr) must contain
//! TEXT. `skip`: the one command of the block starting with PREFIX (with its `\` continuation
//! lines) is left out, for that reason. `simulator`: the bundled simulator runs for the block (on
//! a free port, `SOURCE_BASE_URL` pointing at it, `SOURCE_SECRET=any`), as "The simulator"
//! section has the reader start it.
//!
//! A shell block is a fenced block labelled `sh`, `bash`, `shell`, `console`, `zsh` or
//! `shell-session`, or an unlabelled one that holds a command (a line at the block's margin
//! that starts with `$ ` or with a command word such as `cargo`, `bash`, `sam`, `syncctl`).
//! Other blocks (`json`, `text`, `toml` samples, the diagram) need no marker and may carry none.
//!
//! A runnable block runs with `bash -euo pipefail` in a temporary copy of the repository's
//! files (`git ls-files --cached --others --exclude-standard`: the tracked files and new ones not
//! ignored, so no `.local/`, `.tools/` or `target/`; modification times kept, so that cargo
//! finds the repository's target dir fresh), with `CARGO_TARGET_DIR` set to the target dir
//! these tests were built in and `.tools` a symlink to the repository's. Past its timeout the
//! block's process group is killed and the test fails naming the block.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The longest timeout a marker may ask for: a block that needs longer is not for CI.
const MAX_TIMEOUT_SECS: u64 = 900;

/// Labels of fenced blocks that are shell.
const SHELL_LABELS: [&str; 8] = [
    "sh",
    "bash",
    "shell",
    "console",
    "zsh",
    "shell-session",
    "sh-session",
    "shellsession",
];

/// Words that start a command line in an unlabelled block.
const COMMAND_WORDS: [&str; 32] = [
    "cargo",
    "bash",
    "sh",
    "sam",
    "syncctl",
    "source-sim",
    "bench",
    "export",
    "source",
    "cd",
    "git",
    "aws",
    "curl",
    "python",
    "python3",
    "pip",
    "npm",
    "npx",
    "rustup",
    "make",
    "docker",
    "sudo",
    "apt-get",
    "java",
    "mkdir",
    "rm",
    "cp",
    "echo",
    "env",
    "sqlite3",
    "jq",
    "unzip",
];

/// Why a shell block is not run here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    RunsTheTests,
    ServesUntilStopped,
    NeedsAnAwsAccount,
    ReleaseBuild,
}

impl Reason {
    const ALL: [Reason; 4] = [
        Reason::RunsTheTests,
        Reason::ServesUntilStopped,
        Reason::NeedsAnAwsAccount,
        Reason::ReleaseBuild,
    ];

    fn text(self) -> &'static str {
        match self {
            Reason::RunsTheTests => "runs the tests themselves",
            Reason::ServesUntilStopped => "serves until stopped",
            Reason::NeedsAnAwsAccount => "needs an AWS account",
            Reason::ReleaseBuild => "release build",
        }
    }

    fn parse(s: &str) -> Result<Reason, String> {
        Reason::ALL
            .into_iter()
            .find(|r| r.text() == s.trim())
            .ok_or_else(|| {
                let known: Vec<_> = Reason::ALL.iter().map(|r| r.text()).collect();
                format!(
                    "unknown reason {:?} (one of: {})",
                    s.trim(),
                    known.join(", ")
                )
            })
    }
}

/// What a runnable marker asks.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Run {
    timeout: Duration,
    expects: Vec<String>,
    skips: Vec<(String, Reason)>,
    simulator: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Marker {
    Runnable(Run),
    NotRunnable(Reason),
}

/// One fenced block.
#[derive(Debug)]
struct Block {
    /// 1-based line of the opening fence.
    line: usize,
    label: String,
    /// The content, the fence's indentation removed.
    lines: Vec<String>,
    shell: bool,
    marker: Option<Marker>,
}

impl Block {
    /// `README.md:LINE (`first command`)`, for messages.
    fn name(&self) -> String {
        let first = self
            .lines
            .iter()
            .map(|l| l.trim())
            .find(|l| !l.is_empty())
            .unwrap_or("");
        let short: String = first.chars().take(60).collect();
        format!("README.md:{} (`{short}`)", self.line)
    }
}

/// The fence that opens a block: its character, length, indentation and label.
fn opening_fence(line: &str) -> Option<(char, usize, usize, String)> {
    let indent = line.len() - line.trim_start().len();
    let rest = line.trim_start();
    let c = rest.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let len = rest.chars().take_while(|x| *x == c).count();
    if len < 3 {
        return None;
    }
    let info = rest[len..].trim();
    if c == '`' && info.contains('`') {
        return None;
    }
    let label = info.split_whitespace().next().unwrap_or("").to_lowercase();
    Some((c, len, indent, label))
}

fn closes(line: &str, c: char, len: usize) -> bool {
    let rest = line.trim();
    rest.chars().take_while(|x| *x == c).count() >= len && rest.chars().all(|x| x == c)
}

/// The first word of a command line (`$ ` and `NAME=value` assignments skipped).
fn command_word(line: &str) -> Option<&str> {
    let line = line.strip_prefix("$ ").unwrap_or(line);
    line.split_whitespace().find(|w| {
        let assignment = w.split_once('=').is_some_and(|(name, _)| {
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit())
        });
        !assignment
    })
}

/// Does an unlabelled block hold commands? A line at the block's margin (continuation lines and
/// drawings are indented) that starts with a prompt or a command word.
fn holds_commands(lines: &[String]) -> bool {
    lines.iter().any(|l| {
        if l.starts_with(char::is_whitespace) || l.trim().is_empty() {
            return false;
        }
        if l.starts_with("$ ") {
            return true;
        }
        command_word(l).is_some_and(|w| {
            COMMAND_WORDS.contains(&w)
                || ["./", "scripts/", "target/", "~/"]
                    .iter()
                    .any(|p| w.starts_with(p))
        })
    })
}

/// Split at `;` outside double quotes.
fn fields(body: &str) -> Result<Vec<String>, String> {
    let (mut out, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    for c in body.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ';' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    if quoted {
        return Err("a quote is not closed".into());
    }
    out.push(cur);
    Ok(out
        .into_iter()
        .map(|f| f.trim().to_owned())
        .filter(|f| !f.is_empty())
        .collect())
}

/// `"TEXT"` at the start of `s`: the text and what follows.
fn quoted(s: &str) -> Result<(String, &str), String> {
    let s = s.trim_start();
    let inner = s
        .strip_prefix('"')
        .ok_or_else(|| format!("expected a quoted text in {s:?}"))?;
    let end = inner
        .find('"')
        .ok_or_else(|| format!("the quote in {s:?} is not closed"))?;
    let text = &inner[..end];
    if text.trim().is_empty() {
        return Err("an empty quoted text".into());
    }
    Ok((text.to_owned(), &inner[end + 1..]))
}

fn parse_runnable(body: &str) -> Result<Run, String> {
    let mut run = Run {
        timeout: Duration::ZERO,
        expects: Vec::new(),
        skips: Vec::new(),
        simulator: false,
    };
    let mut timeout = None;
    for field in fields(body)? {
        if let Some(v) = field.strip_prefix("timeout=") {
            let secs: u64 = v
                .trim()
                .parse()
                .map_err(|_| format!("timeout={v:?} is not a number of seconds"))?;
            if !(1..=MAX_TIMEOUT_SECS).contains(&secs) {
                return Err(format!(
                    "timeout={secs}: between 1 and {MAX_TIMEOUT_SECS} seconds (longer: mark it \
                     not-runnable)"
                ));
            }
            if timeout.replace(secs).is_some() {
                return Err("timeout given twice".into());
            }
        } else if let Some(rest) = field.strip_prefix("expect ") {
            let (text, after) = quoted(rest)?;
            if !after.trim().is_empty() {
                return Err(format!("unexpected {after:?} after expect's text"));
            }
            run.expects.push(text);
        } else if let Some(rest) = field.strip_prefix("skip ") {
            let (prefix, after) = quoted(rest)?;
            let reason = after
                .trim_start()
                .strip_prefix(':')
                .ok_or_else(|| format!("skip \"{prefix}\" needs `: REASON`"))?;
            run.skips.push((prefix, Reason::parse(reason)?));
        } else if field == "simulator" {
            run.simulator = true;
        } else {
            return Err(format!(
                "unknown field {field:?} (timeout=SECONDS, expect \"TEXT\", skip \"PREFIX\": \
                 REASON, simulator)"
            ));
        }
    }
    run.timeout = Duration::from_secs(timeout.ok_or("no timeout=SECONDS")?);
    Ok(run)
}

/// A marker comment's content, or `None` when the line is no marker.
fn marker_body(line: &str) -> Option<&str> {
    let body = line.trim().strip_prefix("<!--")?.trim_start();
    let lower = body.to_lowercase();
    ["runnable", "not-runnable", "not runnable", "notrunnable"]
        .iter()
        .any(|p| lower.starts_with(p))
        .then_some(body)
}

fn parse_marker(body: &str) -> Result<Marker, String> {
    let body = body
        .strip_suffix("-->")
        .ok_or("the comment must end on its line with `-->`")?
        .trim();
    if body.contains("-->") {
        return Err("one marker per line".into());
    }
    if let Some(rest) = body.strip_prefix("runnable:") {
        parse_runnable(rest).map(Marker::Runnable)
    } else if let Some(rest) = body.strip_prefix("not-runnable:") {
        let reason = rest.split(';').next().unwrap_or("");
        Reason::parse(reason).map(Marker::NotRunnable)
    } else {
        Err("expected `runnable: timeout=SECONDS...` or `not-runnable: REASON`".into())
    }
}

/// Every fenced block of `text`, and every problem: an unmarked shell block, a malformed
/// marker, a marker not directly before a fence or before a block that is not shell, a fence
/// never closed.
fn parse(text: &str) -> (Vec<Block>, Vec<String>) {
    let (mut blocks, mut problems) = (Vec::new(), Vec::new());
    let lines: Vec<&str> = text.lines().collect();
    // The marker on the previous line: (its line, what it parsed to).
    let mut pending: Option<(usize, Result<Marker, String>)> = None;
    let mut i = 0;
    while i < lines.len() {
        let n = i + 1;
        let Some((c, len, indent, label)) = opening_fence(lines[i]) else {
            if let Some((m, _)) = pending.take() {
                problems.push(format!(
                    "README.md:{m}: a marker must be on the line just before a fence"
                ));
            }
            if let Some(body) = marker_body(lines[i]) {
                pending = Some((n, parse_marker(body)));
            }
            i += 1;
            continue;
        };
        let mut content = Vec::new();
        let mut j = i + 1;
        while j < lines.len() && !closes(lines[j], c, len) {
            let l = lines[j];
            let cut = l.len() - l.trim_start().len();
            content.push(l[cut.min(indent)..].to_owned());
            j += 1;
        }
        if j == lines.len() {
            problems.push(format!("README.md:{n}: this fence is never closed"));
        }
        let shell = SHELL_LABELS.contains(&label.as_str())
            || (label.is_empty() && (holds_commands(&content) || pending.is_some()));
        let mut marker = None;
        match pending.take() {
            Some((m, Err(e))) => problems.push(format!("README.md:{m}: malformed marker: {e}")),
            Some((m, Ok(_))) if !shell => problems.push(format!(
                "README.md:{m}: a marker before a `{label}` block, which is not shell"
            )),
            Some((_, Ok(k))) => marker = Some(k),
            None if shell => problems.push(format!(
                "README.md:{n}: this shell block has no marker: put `<!-- runnable: \
                 timeout=SECONDS -->` or `<!-- not-runnable: REASON -->` on the line before it"
            )),
            None => {}
        }
        let block = Block {
            line: n,
            label,
            lines: content,
            shell,
            marker,
        };
        if let Some(Marker::Runnable(run)) = &block.marker
            && let Err(e) = script(&block, run)
        {
            problems.push(format!("{}: {e}", block.name()));
        }
        blocks.push(block);
        i = j + 1;
    }
    if let Some((m, _)) = pending {
        problems.push(format!(
            "README.md:{m}: a marker must be on the line just before a fence"
        ));
    }
    (blocks, problems)
}

/// The script a runnable block runs: its lines less the skipped commands.
fn script(block: &Block, run: &Run) -> Result<String, String> {
    // Commands: a line and the lines its trailing `\` continues onto.
    let mut commands: Vec<Vec<&str>> = Vec::new();
    let mut continued = false;
    for l in &block.lines {
        if continued {
            commands.last_mut().expect("a command").push(l);
        } else {
            commands.push(vec![l]);
        }
        continued = l.trim_end().ends_with('\\');
    }
    for (prefix, reason) in &run.skips {
        let hits: Vec<usize> = (0..commands.len())
            .filter(|&k| commands[k][0].trim_start().starts_with(prefix.as_str()))
            .collect();
        match hits[..] {
            [k] => {
                commands.remove(k);
            }
            [] => {
                return Err(format!(
                    "skip \"{prefix}\" ({}) matches no command",
                    reason.text()
                ));
            }
            _ => return Err(format!("skip \"{prefix}\" matches several commands")),
        }
    }
    let text: Vec<&str> = commands.concat();
    if !text.iter().any(|l| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with('#')
    }) {
        return Err("every command is skipped: mark the block not-runnable".into());
    }
    Ok(text.join("\n") + "\n")
}

/// How a script ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Exited(i32),
    Signalled,
    TimedOut,
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Exited(code) => write!(f, "exit status {code}"),
            End::Signalled => write!(f, "killed by a signal"),
            End::TimedOut => write!(f, "killed at its timeout (its whole process group)"),
        }
    }
}

/// Kill every process of the group `pgid` (the script's: it leads its own group).
fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Output without terminal colour codes (the logs' `ESC [ ... m`).
fn plain(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Run `script` with `bash -euo pipefail` in `dir`, in a process group of its own, stdout and
/// stderr into one file, until it exits or `timeout` passes (then the group is killed). The
/// group is killed after a normal exit too: nothing the block started in the background stays.
fn run_script(
    script: &str,
    dir: &Path,
    env: &[(String, String)],
    timeout: Duration,
) -> (End, String, Duration) {
    use std::os::unix::process::CommandExt;
    let logs = testkit::TempDir::new("sync-engine-readme-log");
    let log_path = logs.join("output");
    let log = File::create(&log_path).expect("create the output file");
    let mut cmd = Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", script])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("the output file"))
        .stderr(log)
        .process_group(0);
    // What cargo sets for this test binary describes this crate, not the block's shell.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_BIN_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
            ]
            .contains(&k.as_ref())
        {
            cmd.env_remove(k.as_ref());
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let start = Instant::now();
    let mut child = cmd.spawn().expect("start bash");
    let end = loop {
        match child.try_wait().expect("wait for bash") {
            Some(status) => {
                break status.code().map_or(End::Signalled, End::Exited);
            }
            None if start.elapsed() >= timeout => {
                kill_group(child.id());
                let _ = child.wait();
                break End::TimedOut;
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let elapsed = start.elapsed();
    kill_group(child.id());
    let output = std::fs::read(&log_path).unwrap_or_default();
    (end, plain(&String::from_utf8_lossy(&output)), elapsed)
}

/// The last `n` lines of `output`.
fn tail(output: &str, n: usize) -> String {
    let lines: Vec<&str> = output.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// How a block that passed went.
#[derive(Debug)]
struct Passed {
    elapsed: Duration,
    /// cargo waited for a lock another build held (its time is in `elapsed`).
    waited_for_lock: bool,
}

/// Run a runnable block in `dir`: how long it took, or what went wrong, naming the block.
fn run_block(
    block: &Block,
    run: &Run,
    dir: &Path,
    env: &[(String, String)],
) -> Result<Passed, String> {
    let script = script(block, run).map_err(|e| format!("{}: {e}", block.name()))?;
    let (end, output, elapsed) = run_script(&script, dir, env, run.timeout);
    let took = format!("{:.1} s", elapsed.as_secs_f64());
    if end != End::Exited(0) {
        return Err(format!(
            "{} failed: {end} after {took} (timeout {} s); the last lines:\n{}",
            block.name(),
            run.timeout.as_secs(),
            tail(&output, 30)
        ));
    }
    let missing: Vec<&String> = run
        .expects
        .iter()
        .filter(|e| !output.contains(e.as_str()))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{} exited 0 in {took} but did not print {missing:?}; the last lines:\n{}",
            block.name(),
            tail(&output, 30)
        ));
    }
    Ok(Passed {
        elapsed,
        waited_for_lock: output.contains("Blocking waiting for file lock"),
    })
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// The target dir these tests were built in (`<target>/tmp` is cargo's scratch folder).
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target dir")
        .to_path_buf()
}

fn readme() -> String {
    std::fs::read_to_string(root().join("README.md")).expect("read README.md")
}

/// A fresh folder outside the repository (so that no command sees its `.git`, `.local` or
/// `target`) holding the files a commit of the working tree would hold: tracked, and new ones
/// not ignored. Modification times are kept: cargo compares them with the target dir's
/// fingerprints, so the shared target dir stays fresh (it keys packages by their path relative
/// to the workspace root). `.tools` is a symlink to the repository's, for the emulators.
fn fresh_copy() -> testkit::TempDir {
    let root = root();
    let out = Command::new("git")
        .current_dir(&root)
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .output()
        .expect("run git ls-files");
    assert!(
        out.status.success(),
        "git ls-files: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = testkit::TempDir::new("sync-engine-readme");
    let mut copied = 0;
    for name in out.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = std::str::from_utf8(name).expect("a UTF-8 path");
        let (from, to) = (root.join(name), dir.join(name));
        let Ok(meta) = std::fs::symlink_metadata(&from) else {
            continue; // deleted in the working tree
        };
        std::fs::create_dir_all(to.parent().expect("a parent")).expect("create a folder");
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&from).expect("read a symlink");
            std::os::unix::fs::symlink(target, &to).expect("copy a symlink");
            continue;
        }
        std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("copy {name}: {e}"));
        File::options()
            .write(true)
            .open(&to)
            .and_then(|f| f.set_modified(meta.modified()?))
            .unwrap_or_else(|e| panic!("keep the modification time of {name}: {e}"));
        copied += 1;
    }
    assert!(copied > 50, "only {copied} files copied");
    if root.join(".tools").exists() {
        std::os::unix::fs::symlink(root.join(".tools"), dir.join(".tools")).expect("link .tools");
    }
    dir
}

#[test]
fn every_shell_block_of_the_readme_is_marked() {
    let (blocks, problems) = parse(&readme());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Not vacuous: the README has shell blocks, some run, some not, and the diagram is no shell.
    let shell: Vec<&Block> = blocks.iter().filter(|b| b.shell).collect();
    assert!(shell.len() >= 4, "{blocks:?}");
    assert!(
        shell
            .iter()
            .any(|b| matches!(b.marker, Some(Marker::Runnable(_))))
    );
    assert!(
        shell
            .iter()
            .any(|b| matches!(b.marker, Some(Marker::NotRunnable(_))))
    );
    assert!(blocks.iter().any(|b| !b.shell && b.label.is_empty()));
}

/// Each runnable block in a fresh copy of the repository, one after the other; every failure
/// named, with each block's time.
#[test]
fn the_readme_runnable_blocks_pass_in_a_fresh_copy() {
    let (blocks, problems) = parse(&readme());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let mut failures = Vec::new();
    let mut ran = 0;
    for block in &blocks {
        let Some(Marker::Runnable(run)) = &block.marker else {
            continue;
        };
        let copy = fresh_copy();
        let mut env = vec![(
            "CARGO_TARGET_DIR".to_owned(),
            target_dir().display().to_string(),
        )];
        // The simulator the block expects running, on a runtime of its own for the block.
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        let sim = run.simulator.then(|| {
            let sim = runtime.block_on(testkit::sim::start(source_sim::SimConfig {
                people: 10,
                donations: 5,
                ..source_sim::SimConfig::default()
            }));
            env.push(("SOURCE_BASE_URL".into(), sim.base_url()));
            env.push(("SOURCE_SECRET".into(), "any".into()));
            sim
        });
        match run_block(block, run, copy.path(), &env) {
            Ok(p) => eprintln!(
                "{}: passed in {:.1} s (timeout {} s){}",
                block.name(),
                p.elapsed.as_secs_f64(),
                run.timeout.as_secs(),
                if p.waited_for_lock {
                    "; cargo waited for a lock another build held"
                } else {
                    ""
                }
            ),
            Err(e) => failures.push(e),
        }
        if let Some(sim) = sim {
            runtime.block_on(sim.shutdown());
        }
        ran += 1;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(ran > 0, "no runnable block in the README");
}

// Negative controls: the checker and the runner on small READMEs of their own.

fn problems_of(text: &str) -> Vec<String> {
    parse(text).1
}

#[test]
fn an_unmarked_or_badly_marked_shell_block_fails_the_check() {
    let unmarked = "# T\n\nRun it:\n\n```sh\ncargo run -p syncctl -- demo\n```\n";
    let p = problems_of(unmarked);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with("README.md:5: this shell block has no marker"),
        "{p:?}"
    );
    // Each shell label, and an unlabelled block holding a command, needs one too.
    for label in ["bash", "shell", "console", ""] {
        let text = format!("x\n```{label}\nSOURCE_SECRET=any cargo run -p syncctl -- delta\n```\n");
        assert_eq!(problems_of(&text).len(), 1, "{label:?}");
    }
    assert_eq!(problems_of("```\n$ syncctl status\n```\n").len(), 1);
    // Not shell: samples and drawings need no marker and may carry none.
    let samples = "```json\n{\"a\": 1}\n```\n```text\n$ cargo run\nout\n```\n```\nA ─► B\n  cargo ─► C\n```\n";
    assert_eq!(problems_of(samples), Vec::<String>::new());
    let on_json = "<!-- not-runnable: serves until stopped -->\n```json\n{}\n```\n";
    assert!(problems_of(on_json)[0].contains("not shell"));
    // Marked well: no problem.
    let good = "<!-- runnable: timeout=5; expect \"hi; there\"; skip \"bash scripts/test\": runs the tests themselves -->\n```sh\necho 'hi; there'\nbash scripts/test\n```\n<!-- not-runnable: needs an AWS account; sam deploy -->\n```sh\nsam deploy\n```\n";
    assert_eq!(problems_of(good), Vec::<String>::new());
    let (blocks, _) = parse(good);
    assert_eq!(
        blocks[0].marker,
        Some(Marker::Runnable(Run {
            timeout: Duration::from_secs(5),
            expects: vec!["hi; there".into()],
            skips: vec![("bash scripts/test".into(), Reason::RunsTheTests)],
            simulator: false,
        }))
    );
    // Malformed or misplaced markers, each named by its line.
    for (marker, says) in [
        ("<!-- runnable -->", "expected `runnable:"),
        ("<!-- runnable: -->", "no timeout"),
        ("<!-- runnable: timeout=0 -->", "between 1 and"),
        ("<!-- runnable: timeout=5m -->", "not a number"),
        ("<!-- runnable: timeout=5; timeout=6 -->", "twice"),
        ("<!-- runnable: timeout=5; expect \"x -->", "not closed"),
        ("<!-- runnable: timeout=5; retries=2 -->", "unknown field"),
        (
            "<!-- runnable: timeout=5; skip \"nothing\": release build -->",
            "matches no command",
        ),
        (
            "<!-- runnable: timeout=5; skip \"echo\": release build -->",
            "every command",
        ),
        (
            "<!-- runnable: timeout=5; skip \"echo\" -->",
            "needs `: REASON`",
        ),
        ("<!-- not-runnable: too slow -->", "unknown reason"),
        (
            "<!-- not runnable: release build -->",
            "expected `runnable:",
        ),
        ("<!-- runnable: timeout=5", "end on its line"),
    ] {
        let text = format!("intro\n{marker}\n```sh\necho hi\n```\n");
        let p = problems_of(&text);
        // Named by the marker's line, or by the block's when the block does not fit it.
        assert!(
            p.len() == 1 && p[0].starts_with("README.md:") && p[0].contains(says),
            "{marker}: {p:?}"
        );
    }
    let apart = "<!-- runnable: timeout=5 -->\n\n```sh\necho hi\n```\n";
    let p = problems_of(apart);
    assert!(
        p.iter()
            .any(|m| m == "README.md:1: a marker must be on the line just before a fence"),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|m| m.starts_with("README.md:3: this shell block has no marker"))
    );
    assert!(problems_of("```sh\necho hi\n")[0].contains("never closed"));
}

/// The one runnable block of `text`, run in a scratch folder.
fn run_only_block(text: &str) -> Result<Passed, String> {
    let (blocks, problems) = parse(text);
    assert!(problems.is_empty(), "{problems:?}");
    let block = blocks.iter().find(|b| b.marker.is_some()).expect("a block");
    let Some(Marker::Runnable(run)) = &block.marker else {
        panic!("not runnable")
    };
    let dir = testkit::TempDir::new("sync-engine-readme-control");
    run_block(block, run, dir.path(), &[])
}

#[test]
fn a_failing_runnable_block_is_reported_as_failed() {
    let e = run_only_block("a\n\n<!-- runnable: timeout=20 -->\n```sh\necho before\nexit 1\n```\n")
        .unwrap_err();
    assert!(
        e.starts_with("README.md:4 (`echo before`) failed: exit status 1"),
        "{e}"
    );
    assert!(e.contains("before"), "{e}");
    // bash -euo pipefail: a failing command mid-block, an unset variable, a failing pipe stage.
    for body in [
        "false\necho not reached",
        "echo \"$SURELY_UNSET_README_VARIABLE\"",
        "false | cat",
    ] {
        let text = format!("<!-- runnable: timeout=20 -->\n```sh\n{body}\n```\n");
        assert!(run_only_block(&text).is_err(), "{body} passed");
    }
    // An expectation the output does not meet fails a block that exits 0.
    let e = run_only_block(
        "<!-- runnable: timeout=20; expect \"done\" -->\n```sh\necho started\n```\n",
    )
    .unwrap_err();
    assert!(e.contains("did not print [\"done\"]"), "{e}");
    // And the same blocks pass when they do what they say.
    run_only_block("<!-- runnable: timeout=20; expect \"done\" -->\n```sh\necho done | cat\n```\n")
        .expect("passes");
}

#[test]
fn a_runnable_block_over_its_timeout_is_killed_and_reported() {
    let pids = testkit::TempDir::new("sync-engine-readme-pids");
    let pid_file = pids.join("background");
    let text = format!(
        "x\n<!-- runnable: timeout=1 -->\n```sh\nsleep 300 &\necho $! > {}\nsleep 300\n```\n",
        pid_file.display()
    );
    let start = Instant::now();
    let e = run_only_block(&text).unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "not killed at once"
    );
    assert!(
        e.starts_with("README.md:3 (`sleep 300 &`) failed: killed at its timeout"),
        "{e}"
    );
    // The whole group went: the background sleep too (gone, or a zombie awaiting its reaper).
    let pid = std::fs::read_to_string(&pid_file).expect("the background pid");
    let stat = PathBuf::from(format!("/proc/{}/stat", pid.trim()));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match std::fs::read_to_string(&stat) {
            Err(_) => break,
            Ok(s)
                if s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z')) =>
            {
                break;
            }
            Ok(_) if Instant::now() > deadline => panic!("the background sleep {pid} survived"),
            Ok(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
