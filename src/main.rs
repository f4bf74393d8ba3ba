//! The `notifier` binary: everything is in the library; see `notifier --help`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    notifier::cli::main().await
}
