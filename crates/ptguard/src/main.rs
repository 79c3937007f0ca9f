#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
use clap::Parser;

fn main() {
    // The shipped /etc/default/ptguard has `PTGUARD_PROTECT=` commented out; uncommented
    // and left empty it means "no extra domain", not an invalid domain id. (One thread
    // yet: nothing else reads the environment.)
    if std::env::var_os("PTGUARD_PROTECT").is_some_and(|v| v.to_string_lossy().trim().is_empty()) {
        std::env::remove_var("PTGUARD_PROTECT");
    }
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
        // `ptguard lspci | head -1`: the reader has all it wanted; say nothing, as C tools
        // killed by SIGPIPE do.
        let broken_pipe = e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        });
        if broken_pipe {
            std::process::exit(ptguard::exit::OK);
        }
        // The chain of causes, each said once: most messages already carry their cause's
        // text (`cannot write F: No such file or directory`).
        let mut msg = e.to_string();
        for cause in e.chain().skip(1) {
            let text = cause.to_string();
            if !msg.contains(&text) {
                msg.push_str(": ");
                msg.push_str(&text);
            }
        }
        eprintln!("ptguard: {msg}");
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
