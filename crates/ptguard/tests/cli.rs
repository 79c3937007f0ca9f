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
