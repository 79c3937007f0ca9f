use clap::Parser;

fn main() {
    let cli = match ptguard::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                ptguard::exit::USAGE
            } else {
                ptguard::exit::OK
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    init_logging(cli.verbose);
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = ptguard::run(cli, &mut stdout) {
        eprintln!("ptguard: {e:#}");
        std::process::exit(ptguard::exit::FAILURE);
    }
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_env("PTGUARD_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // Under systemd, stderr goes to the journal: it stamps the time itself and reads the
    // level from a `<N>` prefix (sd-daemon(3)).
    let _ = if std::env::var_os("JOURNAL_STREAM").is_some() {
        fmt.event_format(ptguard::journal::JournalFormat).try_init()
    } else {
        fmt.try_init()
    };
}
