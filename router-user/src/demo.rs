pub async fn run(
    _d: crate::config::node::Dataplane,
    _keep: bool,
) -> anyhow::Result<std::process::ExitCode> {
    todo!()
}
