//! README.md says what the binary does (issue 17): its "Command line" block is the
//! usage of every command as `--help` prints it, so that it cannot drift.

use crate::harness::mount::{poolfs, run_ok};

/// The commands a `--help` lists under "Commands:" (without `help`).
fn commands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim_end() != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
}

/// `--help` of `poolfs ARGS...`.
fn help_of(args: &[&str]) -> String {
    let out = run_ok(&mut poolfs(args.iter().chain(&["--help"])));
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// The block README's "Command line" section must hold: for every command (and
/// subcommand), its first help line as a comment, then its usage line.
fn expected_block() -> String {
    let mut out = String::new();
    let mut todo: Vec<Vec<String>> = commands(&help_of(&[]))
        .into_iter()
        .map(|c| vec![c])
        .collect();
    while !todo.is_empty() {
        let path = todo.remove(0);
        let args: Vec<&str> = path.iter().map(String::as_str).collect();
        let help = help_of(&args);
        let subs = commands(&help);
        if !subs.is_empty() {
            // A group (`key`): its subcommands in its place.
            for (i, s) in subs.into_iter().enumerate() {
                let mut p = path.clone();
                p.push(s);
                todo.insert(i, p);
            }
            continue;
        }
        let about = help.lines().next().unwrap_or_default().trim();
        let usage = help
            .lines()
            .find_map(|l| l.strip_prefix("Usage: "))
            .unwrap_or_default();
        out.push_str(&format!("# {about}\n{usage}\n"));
    }
    out
}

/// The first ``` block after the "## Command line" heading of README.md.
fn readme_block() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let section = readme
        .split_once("\n## Command line\n")
        .expect("README.md has a '## Command line' section")
        .1;
    let (_, rest) = section.split_once("```\n").expect("a ``` block in it");
    rest.split_once("```").expect("the block ends").0.to_owned()
}

#[test]
fn readme_command_line_block_is_what_help_prints() {
    let want = expected_block();
    assert!(want.contains("poolfs up"), "no commands found:\n{want}");
    assert_eq!(
        readme_block(),
        want,
        "README.md's Command line block differs from --help; replace it with:\n{want}"
    );
}
