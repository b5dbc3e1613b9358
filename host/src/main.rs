use clap::Parser;

fn main() {
    let args = sluice::cli::normalize_args(std::env::args().collect());
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
