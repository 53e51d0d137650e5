use clap::Parser;

fn main() {
    svcnat::kernel::default_sigpipe();
    let cli = svcnat::cli::Cli::parse();
    // `diff` keeps 1 for "differs": its runtime errors exit 3, so a script can tell them apart.
    let diff = matches!(cli.command, svcnat::cli::Command::Diff { .. });
    match svcnat::commands::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("svcnat: error: {e}");
            std::process::exit(match e.exit_code() {
                1 if diff => 3,
                code => code,
            });
        }
    }
}
