use clap::Parser;

fn main() {
    // Behave like other Unix tools when the reader goes away (`svcnat show | head`).
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = svcnat::cli::Cli::parse();
    match svcnat::commands::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("svcnat: error: {e}");
            std::process::exit(e.exit_code());
        }
    }
}
