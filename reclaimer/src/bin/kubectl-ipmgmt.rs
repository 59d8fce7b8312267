//! `kubectl-ipmgmt`: the same command line as `ipmgmt`, which kubectl runs for
//! `kubectl ipmgmt …` when it is on the PATH.

fn main() -> std::process::ExitCode {
    ipmgmt_reclaimer::cli::main("kubectl ipmgmt")
}
