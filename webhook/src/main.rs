use clap::Parser;
use ipmgmt_webhook::config::Args;

/// A review allocates and frees a few dozen small blocks: glibc's malloc and free took
/// 13% of a review's instructions (callgrind), mimalloc's take 5%. Built without its
/// transparent huge pages (Cargo.toml), which make a heap this small several times
/// resident; on nodes whose THP setting is `always` the chart also sets
/// `MIMALLOC_ALLOW_THP=0`, which turns them off for the process.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .expect("no other crypto provider is installed before main");
    ipmgmt_webhook::init_logging(args.log_format, &args.log_level)?;
    ipmgmt_webhook::runtime::build(args.worker_threads)?.block_on(ipmgmt_webhook::run(args))
}
