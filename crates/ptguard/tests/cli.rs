//! The command line is well formed and documents itself.

use clap::CommandFactory;

#[test]
fn clap_definition_is_consistent() {
    ptguard::Cli::command().debug_assert();
}

#[test]
fn help_documents_exit_codes_and_every_command() {
    let help = ptguard::Cli::command().render_long_help().to_string();
    for word in [
        "EXIT STATUS",
        "scenario",
        "explore",
        "lspci",
        "xenstored",
        "bench",
    ] {
        assert!(help.contains(word), "--help lacks {word}");
    }
}

/// Issue 11 (11): several arguments had empty help.
#[test]
fn every_argument_of_every_command_says_what_it_is() {
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for a in cmd.get_arguments() {
            let id = a.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            if a.get_help().is_none() && a.get_long_help().is_none() {
                missing.push(format!("{path} {id}"));
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.get_about().is_none() {
                missing.push(format!("{path} {} (no about)", sub.get_name()));
            }
            walk(sub, &format!("{path} {}", sub.get_name()), missing);
        }
    }
    let mut missing = Vec::new();
    walk(&ptguard::Cli::command(), "ptguard", &mut missing);
    assert!(missing.is_empty(), "arguments without help: {missing:#?}");
}
