//! The documentation checked against the repository: every path it names
//! exists, every `cargo ... -p` package and `--bin` binary is one of ours,
//! and every `bems` subcommand and flag it shows is one the CLI accepts
//! (asked of the built binary's `--help`). A rename that forgets the docs
//! fails here, naming the file, the line and the stale reference.
//!
//! Read: every `*.md` of the repository outside `target/` and the emulators'
//! state. Generated places (`target/`, `.bems/`, fuzz corpora and
//! artifacts, `~/.cache/bems`) are not required to exist.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Something a document names that must exist.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reference {
    /// A file or directory, as written (relative to the repository or to
    /// the document).
    Path(String),
    /// A Markdown link's target, relative to the document.
    Link(String),
    /// `cargo ... -p NAME`.
    Package(String),
    /// `cargo ... --bin NAME`.
    Bin(String),
    /// `bems SUBCOMMAND --flag ...`.
    Bems { subcommand: String, flags: Vec<String> },
}

/// A reference and the line it starts on (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Found {
    line: usize,
    reference: Reference,
}

/// Top-level entries of the repository whose mention as `entry/...` is a path.
fn top_level(repo: &Path) -> BTreeSet<String> {
    std::fs::read_dir(repo)
        .expect("the repository")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

const EXTENSIONS: &[&str] = &[".rs", ".md", ".toml", ".json", ".yaml", ".yml", ".sh", ".sql", ".py", ".txt", ".html"];

/// Paths that the tools make as they run, or the user downloads (AWS's
/// RDS CA bundle, git-ignored): named in the docs, absent from a fresh
/// clone.
const GENERATED: &[&str] =
    &["target", ".bems", "fuzz/corpus", "fuzz/artifacts", "fuzz/coverage", "infra/ca/rds-ca.pem"];

/// Whether a token reads as a path into the repository.
fn is_path(token: &str, top: &BTreeSet<String>) -> bool {
    if token.contains("://")
        || token.starts_with('/')
        || token.starts_with('~')
        || token.starts_with('$')
        || token.contains(['<', '>', '{', '}', '*', '…', '=', '&', '`', '|', '(', ')', '[', ']', '@'])
    {
        return false;
    }
    let Some((first, _)) = token.split_once('/') else {
        // A bare top-level file such as `BENCHMARKS.md`.
        return top.contains(token) && EXTENSIONS.iter().any(|e| token.ends_with(e));
    };
    if first.is_empty() || first == "." || first == ".." {
        return false;
    }
    top.contains(first) || first.starts_with("bems-") || EXTENSIONS.iter().any(|e| token.ends_with(e))
}

/// Trims what surrounds a path in prose: quotes, punctuation, a line number.
fn trimmed(token: &str) -> &str {
    let t = token.trim_matches(|c: char| matches!(c, '"' | '\'' | ',' | ';' | '.' | ':' | '!' | '?'));
    // `file.rs:120` names a line of the file.
    match t.rsplit_once(':') {
        Some((file, line)) if !line.is_empty() && line.bytes().all(|b| b.is_ascii_digit()) => file,
        _ => t,
    }
}

/// The references in a command line or a code span.
fn from_command(text: &str, line: usize, top: &BTreeSet<String>, out: &mut Vec<Found>) {
    let tokens: Vec<&str> = text.split_whitespace().collect();
    for t in &tokens {
        let t = trimmed(t);
        if is_path(t, top) {
            out.push(Found { line, reference: Reference::Path(t.trim_end_matches('/').to_owned()) });
        }
    }
    // Each command of a line (`a && b`, `a | b`, `a; b`).
    for command in tokens.split(|t| matches!(*t, "&&" | "||" | "|" | ";")) {
        let words: Vec<&str> = command.iter().copied().take_while(|t| !t.starts_with('#')).collect();
        let Some(start) = words.iter().position(|w| *w == "cargo" || *w == "bems") else { continue };
        let words = &words[start..];
        if words[0] == "cargo" {
            let mut package = None;
            for pair in words.windows(2) {
                match pair[0] {
                    "-p" | "--package" => {
                        package = Some(pair[1]);
                        out.push(Found { line, reference: Reference::Package(pair[1].to_owned()) });
                    }
                    "--bin" => out.push(Found { line, reference: Reference::Bin(pair[1].to_owned()) }),
                    _ => {}
                }
            }
            // `cargo run -p bems-cli -- SUBCOMMAND ...` is `bems SUBCOMMAND ...`.
            if package == Some("bems-cli")
                && let Some(dashes) = words.iter().position(|w| *w == "--")
            {
                bems(&words[dashes + 1..], line, out);
            }
        } else {
            bems(&words[1..], line, out);
        }
    }
}

/// `SUBCOMMAND --flag value ...` after `bems`.
fn bems(args: &[&str], line: usize, out: &mut Vec<Found>) {
    let Some(subcommand) = args.first().filter(|s| s.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')) else {
        return;
    };
    if subcommand.starts_with('-') {
        return;
    }
    // A nested subcommand (`bems store migrate`): a second plain word.
    let mut subcommand = (*subcommand).to_owned();
    if let Some(nested) = args.get(1).filter(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase())) {
        subcommand = format!("{subcommand} {nested}");
    }
    let flags = args[1..]
        .iter()
        .filter(|a| a.starts_with("--") && a.len() > 2)
        .map(|a| a.split('=').next().unwrap_or(a).trim_end_matches([',', '.', ')']).to_owned())
        .collect();
    out.push(Found { line, reference: Reference::Bems { subcommand, flags } });
}

/// Every reference in a Markdown document.
fn references(markdown: &str, top: &BTreeSet<String>) -> Vec<Found> {
    let mut out = Vec::new();
    let mut fence: Option<String> = None;
    // Prose is read a paragraph at a time: code spans and links may wrap.
    let mut paragraph = String::new();
    let mut paragraph_line = 0;
    let lines: Vec<&str> = markdown.lines().collect();
    for (i, raw) in lines.iter().enumerate() {
        let line = i + 1;
        let trimmed_line = raw.trim_start();
        if let Some(rest) = trimmed_line.strip_prefix("```") {
            prose(&paragraph, paragraph_line, top, &mut out);
            paragraph.clear();
            fence = match fence {
                Some(_) => None,
                None => Some(rest.trim().to_owned()),
            };
            continue;
        }
        if let Some(language) = &fence {
            if matches!(language.as_str(), "sh" | "bash" | "shell" | "console" | "") {
                from_command(raw, line, top, &mut out);
            }
            continue;
        }
        if raw.trim().is_empty() {
            prose(&paragraph, paragraph_line, top, &mut out);
            paragraph.clear();
            continue;
        }
        if paragraph.is_empty() {
            paragraph_line = line;
        }
        paragraph.push_str(raw);
        paragraph.push('\n');
    }
    prose(&paragraph, paragraph_line, top, &mut out);
    out
}

/// The code spans and link targets of a paragraph.
fn prose(text: &str, first_line: usize, top: &BTreeSet<String>, out: &mut Vec<Found>) {
    let line_of = |offset: usize| first_line + text[..offset].matches('\n').count();
    // Code spans: `...` (single backticks; doubled ones are rare here).
    let mut rest = text;
    let mut offset = 0;
    while let Some(start) = rest.find('`') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('`') else { break };
        let span = after[..end].replace('\n', " ");
        from_command(&span, line_of(offset + start), top, out);
        let consumed = start + 1 + end + 1;
        offset += consumed;
        rest = &rest[consumed..];
    }
    // Links: [text](target), outside code spans is close enough here.
    let mut from = 0;
    while let Some(at) = text[from..].find("](") {
        let start = from + at + 2;
        let Some(len) = text[start..].find(')') else { break };
        let target = &text[start..start + len];
        if !target.contains("://") && !target.starts_with('#') && !target.starts_with("mailto:") && !target.is_empty() {
            let path = target.split('#').next().unwrap_or(target);
            out.push(Found { line: line_of(start), reference: Reference::Link(path.to_owned()) });
        }
        from = start + len;
    }
}

/// The subcommands a `--help` text lists.
fn commands(help: &str) -> Vec<String> {
    help.split("Commands:")
        .nth(1)
        .map(|list| {
            list.lines()
                .skip(1)
                .take_while(|l| !l.trim().is_empty())
                .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
                .filter(|c| c != "help")
                .collect()
        })
        .unwrap_or_default()
}

/// What the CLI accepts: its subcommands (`store migrate` for a nested
/// one) and each one's flags, from `--help`.
fn cli_surface(bems: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let help = |args: &[&str]| {
        let out = Command::new(bems).args(args).output().expect("bems runs");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let flags = |text: &str| -> BTreeSet<String> {
        text.split(|ch: char| ch.is_whitespace() || ch == ',' || ch == '[' || ch == '<' || ch == '=')
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .map(str::to_owned)
            .collect()
    };
    let top = commands(&help(&["--help"]));
    assert!(!top.is_empty(), "bems --help lists its commands");
    let mut out = BTreeMap::new();
    for c in top {
        let text = help(&[&c, "--help"]);
        for nested in commands(&text) {
            let text = help(&[&c, &nested, "--help"]);
            out.insert(format!("{c} {nested}"), flags(&text));
        }
        out.insert(c, flags(&text));
    }
    out
}

/// The workspace's packages (and the fuzz and guard-check workspaces'), and
/// every binary name.
fn packages_and_bins(repo: &Path) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut manifests = vec![repo.join("fuzz/Cargo.toml"), repo.join("infra/guard-check/Cargo.toml")];
    let root = std::fs::read_to_string(repo.join("Cargo.toml")).expect("workspace manifest");
    let members = root.split("members = [").nth(1).and_then(|m| m.split(']').next()).expect("workspace members");
    for member in members.split(',').map(|m| m.trim().trim_matches('"')).filter(|m| !m.is_empty()) {
        manifests.push(repo.join(member).join("Cargo.toml"));
    }
    let (mut packages, mut bins) = (BTreeSet::new(), BTreeSet::new());
    for manifest in manifests {
        let text = std::fs::read_to_string(&manifest).unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
        let mut section = "";
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                section = line;
            } else if let Some(value) = line.strip_prefix("name = ") {
                let name = value.trim_matches('"').to_owned();
                match section {
                    "[package]" => {
                        packages.insert(name.clone());
                        bins.insert(name);
                    }
                    "[[bin]]" => {
                        bins.insert(name);
                    }
                    _ => {}
                }
            }
        }
    }
    (packages, bins)
}

fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if !matches!(name.as_str(), "target" | ".git" | ".bems" | "corpus" | "artifacts" | "node_modules") {
                markdown_files(&path, out);
            }
        } else if name.ends_with(".md") {
            out.push(path);
        }
    }
}

/// The problems of one document: each stale reference, with its line.
fn problems(
    repo: &Path,
    document: &Path,
    found: &[Found],
    packages: &BTreeSet<String>,
    bins: &BTreeSet<String>,
    cli: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    let dir = document.parent().unwrap_or(repo);
    let exists = |p: &str| repo.join(p).exists() || dir.join(p).exists();
    let generated = |p: &str| GENERATED.iter().any(|g| p == *g || p.starts_with(&format!("{g}/")));
    let mut out = Vec::new();
    for Found { line, reference } in found {
        let problem = match reference {
            Reference::Path(p) if !generated(p) && !exists(p) => Some(format!("no such path `{p}`")),
            Reference::Link(p) if !dir.join(p).exists() => Some(format!("link to a missing file `{p}`")),
            Reference::Package(p) if !packages.contains(p) => Some(format!("no package `{p}` (cargo -p)")),
            Reference::Bin(b) if !bins.contains(b) => Some(format!("no binary `{b}` (cargo --bin)")),
            // `bems history INV-1`: the second word is no subcommand.
            Reference::Bems { subcommand, flags } => {
                match cli.get(subcommand).or_else(|| subcommand.split_once(' ').and_then(|(first, _)| cli.get(first))) {
                    None => Some(format!("`bems {subcommand}` is no subcommand")),
                    Some(known) => {
                        let unknown: Vec<&String> = flags.iter().filter(|f| !known.contains(*f)).collect();
                        (!unknown.is_empty()).then(|| format!("`bems {subcommand}` has no flag {unknown:?}"))
                    }
                }
            }
            _ => None,
        };
        if let Some(problem) = problem {
            let shown = document.strip_prefix(repo).unwrap_or(document);
            out.push(format!("{}:{line}: {problem}", shown.display()));
        }
    }
    out
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the repository").to_path_buf()
}

#[test]
fn every_documented_path_package_command_and_flag_exists() {
    let repo = repo();
    let top = top_level(&repo);
    let (packages, bins) = packages_and_bins(&repo);
    let cli = cli_surface(Path::new(env!("CARGO_BIN_EXE_bems")));
    assert!(cli.contains_key("stuck") && cli["stuck"].contains("--sla"), "the CLI's help was read: {cli:?}");
    let mut documents = Vec::new();
    markdown_files(&repo, &mut documents);
    documents.sort();
    assert!(documents.iter().any(|d| d.ends_with("README.md")), "found the docs");
    let mut all = Vec::new();
    let mut checked = 0;
    for document in &documents {
        let text = std::fs::read_to_string(document).expect("readable");
        let found = references(&text, &top);
        checked += found.len();
        all.extend(problems(&repo, document, &found, &packages, &bins, &cli));
    }
    assert!(checked > 100, "only {checked} references found: is the parser reading the docs?");
    assert!(all.is_empty(), "stale references in the docs:\n{}", all.join("\n"));
}

/// A small fake repository for the checker's own tests.
fn fixture() -> (tempdir::Dir, BTreeSet<String>) {
    let dir = tempdir::Dir::new();
    std::fs::create_dir_all(dir.path().join("bems-core/src")).expect("mkdir");
    std::fs::write(dir.path().join("bems-core/src/lib.rs"), "").expect("write");
    std::fs::create_dir_all(dir.path().join("docs")).expect("mkdir");
    std::fs::write(dir.path().join("docs/a.md"), "").expect("write");
    let top = top_level(dir.path());
    (dir, top)
}

mod tempdir {
    //! A scratch directory removed on drop.
    use std::path::{Path, PathBuf};

    #[derive(Debug)]
    pub(crate) struct Dir(PathBuf);

    impl Dir {
        pub(crate) fn new() -> Dir {
            let path = std::env::temp_dir().join(format!(
                "bems-docs-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).expect("temp dir");
            Dir(path)
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn check(dir: &Path, top: &BTreeSet<String>, markdown: &str) -> Vec<String> {
    let document = dir.join("docs/a.md");
    let packages = BTreeSet::from(["bems-core".to_owned()]);
    let bins = BTreeSet::from(["bems-core".to_owned(), "route-forwarder".to_owned()]);
    let cli = BTreeMap::from([("stuck".to_owned(), BTreeSet::from(["--cell".to_owned(), "--sla".to_owned()]))]);
    problems(dir, &document, &references(markdown, top), &packages, &bins, &cli)
}

#[test]
fn a_renamed_path_is_reported_with_its_line() {
    let (dir, top) = fixture();
    assert!(check(dir.path(), &top, "See `bems-core/src/lib.rs`.\n").is_empty());
    let found = check(dir.path(), &top, "Intro.\n\nSee `bems-core/src/main.rs` and\n`bems-cor/src/lib.rs:12`.\n");
    assert_eq!(
        found,
        vec!["docs/a.md:3: no such path `bems-core/src/main.rs`", "docs/a.md:4: no such path `bems-cor/src/lib.rs`"]
    );
}

#[test]
fn links_are_relative_to_the_document() {
    let (dir, top) = fixture();
    assert!(
        check(dir.path(), &top, "[core](../bems-core/src/lib.rs) [web](https://example.com) [here](#x)").is_empty()
    );
    assert_eq!(check(dir.path(), &top, "[gone](gone.md#part)"), vec!["docs/a.md:1: link to a missing file `gone.md`"]);
}

#[test]
fn packages_bins_subcommands_and_flags_are_checked_in_code_blocks_and_spans() {
    let (dir, top) = fixture();
    let ok = "```sh\ncargo run -p bems-core --bin route-forwarder   # fine\nbems stuck --cell x --sla=120\n```\n";
    assert!(check(dir.path(), &top, ok).is_empty(), "{:?}", check(dir.path(), &top, ok));
    let stale = "```sh\ncargo test -p local-cell && cargo run -p bems-core --bin timestream\nbems stuck --window 5\n```\n\
                 Run `cargo run -p bems-cli -- redrive --all`.\n";
    assert_eq!(
        check(dir.path(), &top, stale),
        vec![
            "docs/a.md:2: no package `local-cell` (cargo -p)",
            "docs/a.md:2: no binary `timestream` (cargo --bin)",
            "docs/a.md:3: `bems stuck` has no flag [\"--window\"]",
            "docs/a.md:5: no package `bems-cli` (cargo -p)",
            "docs/a.md:5: `bems redrive` is no subcommand",
        ]
    );
}

#[test]
fn generated_places_and_non_paths_are_not_required() {
    let (dir, top) = fixture();
    let text = "`target/test-artifacts/`, `~/.cache/bems`, `POST /invoices/<stage>`, `alias/aws/sns`, `.bems/run/`, \
                `application/json`, `bems_core::publish`";
    assert!(check(dir.path(), &top, text).is_empty(), "{:?}", check(dir.path(), &top, text));
}
