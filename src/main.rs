//! The `herd` command: run one server, run a whole herd, or talk to a server.
//! Each subcommand lives in its own module of `cli`.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
