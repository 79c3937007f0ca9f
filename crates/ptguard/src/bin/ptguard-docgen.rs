//! Writes ptguard's man pages (one per command: `ptguard.8`, `ptguard-doctor.8`, ...) and
//! shell completions (bash, zsh, fish) from the command-line definition, for packaging.
//! Usage: ptguard-docgen OUT-DIR

use std::path::PathBuf;

use clap::CommandFactory;

/// `NAME.8` for `cmd`, and `NAME-SUB.8` for each of its subcommands, recursively.
fn write_pages(cmd: &clap::Command, name: &str, dir: &std::path::Path) -> anyhow::Result<()> {
    let page = clap_mangen::Man::new(cmd.clone().display_name(name.to_string()))
        .section("8")
        .manual("ptguard");
    let mut file = std::fs::File::create(dir.join(format!("{name}.8")))?;
    page.render(&mut file)?;
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or_else(|| anyhow::anyhow!("usage: ptguard-docgen OUT-DIR"))?,
    );
    let man = out.join("man");
    let completions = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    let mut cmd = ptguard::Cli::command();
    cmd.build();
    // Section 8: system administration commands, as for xl.
    write_pages(&cmd, "ptguard", &man)?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut cmd, "ptguard", &completions)?;
    }
    for d in [&man, &completions] {
        for e in std::fs::read_dir(d)? {
            println!("{}", e?.path().display());
        }
    }
    Ok(())
}
