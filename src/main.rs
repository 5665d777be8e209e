//! The `firstkey` binary; everything lives in the library.

fn main() -> std::process::ExitCode {
    firstkey::cli::main()
}
