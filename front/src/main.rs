//! `handoff-front`: see the library documentation.

fn main() -> std::process::ExitCode {
    handoff_front::entry::main()
}
