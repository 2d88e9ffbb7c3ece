//! Every `bestofn` command in README.md runs as written from the repository root, with the real
//! binary on `PATH`: a newcomer copying them must not meet a missing file or a wrong flag. A
//! command that needs a server says so in its comment (`# needs ...`) and is only checked to
//! exist; `bestofn serve` is left to the tests that start servers. Where README shows a command
//! with its output (`$ bestofn ...` followed by lines), the real output must contain those lines
//! in that order (`...` stands for lines left out). The documents under `docs/` are held to the
//! second rule: every `$ bestofn ...` they show with its output runs and prints it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One command found in README, with the output shown under it (if any).
#[derive(Debug)]
struct Example {
    /// README's line number of the command.
    line: usize,
    command: String,
    needs_server: bool,
    shown_output: Vec<String>,
}

/// The `bestofn` commands of README's `sh` code blocks, continuation lines joined.
fn examples(readme: &str) -> Vec<Example> {
    let mut out: Vec<Example> = Vec::new();
    let mut in_block = false;
    let mut pending: Option<(usize, String)> = None;
    let mut collecting_output = false;
    for (number, line) in readme.lines().enumerate() {
        let number = number + 1;
        if line.starts_with("```") {
            in_block = !in_block && line.trim() == "```sh";
            collecting_output = false;
            continue;
        }
        if !in_block {
            continue;
        }
        if let Some((start, mut text)) = pending.take() {
            text.push(' ');
            text.push_str(line.trim());
            match text.strip_suffix('\\') {
                Some(open) => pending = Some((start, open.trim_end().to_string())),
                None => out.push(example(start, &text)),
            }
            continue;
        }
        let (prompt, body) = match line.strip_prefix("$ ") {
            Some(body) => (true, body),
            None => (false, line),
        };
        if body.starts_with("bestofn ") {
            collecting_output = prompt;
            match body.strip_suffix('\\') {
                Some(open) => pending = Some((number, open.trim_end().to_string())),
                None => out.push(example(number, body)),
            }
        } else if collecting_output && let Some(last) = out.last_mut() {
            last.shown_output.push(line.trim_end().to_string());
        }
    }
    out
}

fn example(line: usize, text: &str) -> Example {
    let (command, comment) = match text.split_once(" #") {
        Some((command, comment)) => (command.trim(), comment),
        None => (text.trim(), ""),
    };
    Example { line, command: command.to_string(), needs_server: comment.contains("needs "), shown_output: Vec::new() }
}

/// A folder holding only a `bestofn` link to the binary under test, to put first on `PATH`.
fn bin_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bestofn-readme-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("bestofn");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(common::bestofn_exe().canonicalize().unwrap(), &link).unwrap();
    dir
}

/// Runs `command` with `sh -c` from `root`, killed past `limit`: (exit code, stdout, stderr).
fn run(root: &Path, bin: &Path, command: &str, limit: Duration) -> (Option<i32>, String, String) {
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let stdout = tempfile::NamedTempFile::new().unwrap();
    let stderr = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(root)
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(stdout.reopen().unwrap())
        .stderr(stderr.reopen().unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (code, std::fs::read_to_string(stdout.path()).unwrap(), std::fs::read_to_string(stderr.path()).unwrap())
}

/// Whether `shown` (README's lines, `...` for any run of lines) appears in `actual` in order.
fn shows(actual: &str, shown: &[String]) -> Result<(), String> {
    let actual: Vec<&str> = actual.lines().map(str::trim_end).collect();
    let mut at = 0;
    for expected in shown.iter().filter(|l| l.trim() != "..." && !l.trim().is_empty()) {
        match actual[at..].iter().position(|line| line == expected) {
            Some(found) => at += found + 1,
            None => return Err(format!("README shows {expected:?}, which the real output lacks after line {at}")),
        }
    }
    Ok(())
}

#[test]
fn every_readme_command_runs_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let found = examples(&readme);
    let runnable: Vec<&Example> =
        found.iter().filter(|e| !e.needs_server && !e.command.starts_with("bestofn serve")).collect();
    assert!(runnable.len() >= 6, "README's runnable bestofn commands: {found:#?}");
    let bin = bin_dir("readme");
    let mut failures = Vec::new();
    for example in &runnable {
        let (code, stdout, stderr) = run(root, &bin, &example.command, Duration::from_secs(120));
        if code != Some(0) {
            failures.push(format!(
                "README line {}: `{}` exited with {code:?}\nstderr: {stderr}",
                example.line, example.command
            ));
        } else if stdout.trim().is_empty() {
            failures.push(format!("README line {}: `{}` printed nothing", example.line, example.command));
        } else if let Err(e) = shows(&stdout, &example.shown_output) {
            failures.push(format!("README line {}: `{}`: {e}\nstdout:\n{stdout}", example.line, example.command));
        }
    }
    let _ = std::fs::remove_dir_all(&bin);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn every_output_the_docs_show_is_real() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = bin_dir("docs");
    let mut shown = 0;
    let mut failures = Vec::new();
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for example in examples(&text).iter().filter(|e| !e.shown_output.is_empty()) {
            shown += 1;
            let (code, stdout, stderr) = run(root, &bin, &example.command, Duration::from_secs(120));
            let place = format!("{} line {}: `{}`", path.display(), example.line, example.command);
            if code != Some(0) {
                failures.push(format!("{place} exited with {code:?}\nstderr: {stderr}"));
            } else if let Err(e) = shows(&stdout, &example.shown_output) {
                failures.push(format!("{place}: {e}\nstdout:\n{stdout}"));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&bin);
    assert!(shown >= 3, "the docs show {shown} command outputs");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_commands_that_need_a_server_name_files_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    for example in examples(&readme).iter().filter(|e| e.needs_server) {
        for word in example.command.split_whitespace().filter(|w| w.contains('/') && !w.starts_with("http")) {
            assert!(root.join(word).exists(), "README line {}: {word} does not exist", example.line);
        }
    }
}

#[test]
fn the_extractor_joins_continuations_and_reads_shown_output() {
    let text = "```sh\nbestofn eval bon \\\n    --samples x.jsonl   # a comment\nbestofn eval rewardbench --dataset d  # needs an RM server\n```\n\n```\n$ bestofn ignored\n```\n```sh\n$ bestofn eval leaderboard f.csv\nline one\n...\nline two\n```\n";
    let found = examples(text);
    assert_eq!(found.len(), 3, "{found:#?}");
    assert_eq!(found[0].command, "bestofn eval bon --samples x.jsonl");
    assert!(!found[0].needs_server);
    assert!(found[1].needs_server);
    assert_eq!(found[2].shown_output, vec!["line one", "...", "line two"]);
    assert!(shows("line one\nx\nline two\n", &found[2].shown_output).is_ok());
    assert!(shows("line two\nline one\n", &found[2].shown_output).is_err());
}
