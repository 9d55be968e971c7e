fn main() -> std::process::ExitCode {
    vmscan::cli::main()
}
