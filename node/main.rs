//! The `cascade` binary; everything it does is in [`cascade::cli`].

fn main() -> std::process::ExitCode {
    cascade::cli::main()
}
