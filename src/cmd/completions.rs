//! `faasd completions bash|zsh|fish`: print a shell completion script for every subcommand and
//! flag, generated from the parser itself so it never drifts from it.

use super::exit;

/// The shells completion scripts are made for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Shell {
    /// Bash: `source <(faasd completions bash)`.
    Bash,
    /// Zsh: save as `_faasd` in a directory on `$fpath`.
    Zsh,
    /// Fish: save as `~/.config/fish/completions/faasd.fish`.
    Fish,
}

/// Print a shell completion script.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Runs `faasd completions`: writes the script to stdout.
pub async fn run(args: CompletionsArgs) -> anyhow::Result<u8> {
    let shell = match args.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut command = <super::Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut command, "faasd", &mut std::io::stdout());
    Ok(exit::OK)
}
