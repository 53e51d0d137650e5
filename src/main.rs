use clap::Parser;

fn main() {
    svcnat::kernel::default_sigpipe();
    let cli = svcnat::cli::Cli::parse();
    match svcnat::commands::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("svcnat: error: {e}");
            std::process::exit(e.exit_code());
        }
    }
}
