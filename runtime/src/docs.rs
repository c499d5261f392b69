//! What every binary says about itself from its clap definition: shell completions
//! (`<binary> completions bash|zsh|fish`) and man pages (`<binary> man --dir DIR`, one page
//! for the binary and one per subcommand, as `git-commit(1)` beside `git(1)`). The packages ship
//! both (`scripts/package`).

use std::path::{Path, PathBuf};

/// `completions`' arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct CompletionsArgs {
    /// The shell to complete for. Bash: `source <(BINARY completions bash)`, or save it under
    /// /usr/share/bash-completion/completions/BINARY.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `man`'s arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct ManArgs {
    /// Write the pages (BINARY.1, BINARY-SUBCOMMAND.1, ...) into this directory (created if
    /// missing); `man -l DIR/BINARY.1` reads one. Without it, BINARY.1 goes to stdout.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// The two subcommands every binary has; flattened into each binary's own `Command` enum
/// (`#[command(flatten)] Docs(runtime::docs::DocsCommand)`) and run with `run`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum DocsCommand {
    /// Print a shell completion script, e.g. `source <(BINARY completions bash)`.
    Completions(CompletionsArgs),
    /// Print the man page, or write one per command into --dir.
    Man(ManArgs),
}

/// Runs `which` for the binary whose clap definition is `cmd`; the exit code to return.
pub fn run(cmd: clap::Command, which: &DocsCommand) -> std::process::ExitCode {
    let name = cmd.get_name().to_string();
    let mut stdout = std::io::stdout();
    match which {
        DocsCommand::Completions(args) => completions(cmd, args, &mut stdout),
        DocsCommand::Man(args) => match man(cmd, args, &mut stdout) {
            Ok(written) => {
                for f in written {
                    println!("wrote {}", f.display());
                }
            }
            Err(e) => {
                eprintln!("{name} man: {e}");
                return std::process::ExitCode::FAILURE;
            }
        },
    }
    std::process::ExitCode::SUCCESS
}

/// Writes the completion script for `cmd` to `out`.
pub fn completions(mut cmd: clap::Command, args: &CompletionsArgs, out: &mut dyn std::io::Write) {
    let name = cmd.get_name().to_string();
    clap_complete::generate(args.shell, &mut cmd, name, out);
}

/// Writes the man pages of `cmd` (to `args.dir`, or the top page to `out`); returns the files
/// written.
pub fn man(cmd: clap::Command, args: &ManArgs, out: &mut dyn std::io::Write) -> std::io::Result<Vec<PathBuf>> {
    let Some(dir) = &args.dir else {
        clap_mangen::Man::new(cmd).render(out)?;
        return Ok(Vec::new());
    };
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    write_pages(&cmd.clone(), cmd.get_name(), dir, &mut written)?;
    Ok(written)
}

/// The page of `cmd` as `name.1`, then each visible subcommand's as `name-sub.1`, recursively.
fn write_pages(cmd: &clap::Command, name: &str, dir: &Path, written: &mut Vec<PathBuf>) -> std::io::Result<()> {
    // A subcommand's page is titled with its full name (`registry-snapshot-save`).
    let page = cmd.clone().name(name.to_string());
    let path = dir.join(format!("{name}.1"));
    let mut buf = Vec::new();
    clap_mangen::Man::new(page).render(&mut buf)?;
    std::fs::write(&path, buf)?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli() -> clap::Command {
        clap::Command::new("demo")
            .about("A demo")
            .subcommand(clap::Command::new("run").about("Runs").arg(clap::Arg::new("fast").long("fast").action(clap::ArgAction::SetTrue)))
            .subcommand(clap::Command::new("snap").subcommand(clap::Command::new("save")))
    }

    #[test]
    fn man_writes_a_page_per_command_and_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        let written = man(cli(), &ManArgs { dir: Some(dir.path().into()) }, &mut Vec::new()).unwrap();
        let names: Vec<String> = written.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["demo.1", "demo-run.1", "demo-snap.1", "demo-snap-save.1"]);
        let run = std::fs::read_to_string(dir.path().join("demo-run.1")).unwrap();
        assert!(run.contains("demo\\-run") && run.contains("fast"), "{run}");
    }

    #[test]
    fn bash_completions_know_the_subcommands() {
        let mut out = Vec::new();
        completions(cli(), &CompletionsArgs { shell: clap_complete::Shell::Bash }, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("complete") && text.contains("snap") && text.contains("--fast"), "{text}");
    }
}
