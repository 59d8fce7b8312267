//! `ipmgmt`: the project's command line for users (`ipmgmt_reclaimer::cli`).

fn main() -> std::process::ExitCode {
    ipmgmt_reclaimer::cli::main("ipmgmt")
}
