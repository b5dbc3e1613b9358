use clap::Parser;

fn main() {
    // Arguments that are not UTF-8 get one line, not a panic.
    let mut args = Vec::new();
    for (i, a) in std::env::args_os().enumerate() {
        match a.into_string() {
            Ok(a) => args.push(a),
            Err(a) => {
                eprintln!(
                    "error: argument {i} ({}) is not valid UTF-8; sluice takes paths and URLs in UTF-8 only: rename the file or use a path to it that is",
                    a.to_string_lossy()
                );
                std::process::exit(2);
            }
        }
    }
    let args = sluice::cli::normalize_args(args);
    let cli = match sluice::cli::Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    if matches!(cli.command, sluice::cli::Command::Replicate(_)) {
        // A long-lived process: trade glibc's thread caches for memory it can hand
        // back (this may execute the process again, with the same arguments).
        sluice::daemon::memory::without_thread_caches();
    }
    sluice::capture::db::configure_sqlite();
    sluice::daemon::memory::configure();
    if let Err(e) = sluice::cli::run(cli) {
        // One line: the cause chain joined with ": ", inner line breaks flattened.
        let text = format!("{e:#}");
        eprintln!("error: {}", text.split_whitespace().collect::<Vec<_>>().join(" "));
        // With -exec, a failing application's status becomes ours.
        let code = e.downcast_ref::<sluice::daemon::ApplicationExit>().map_or(1, |a| a.code);
        std::process::exit(code);
    }
}
