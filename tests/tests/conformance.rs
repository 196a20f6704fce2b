//! The conformance suite, instantiated for every backend. Cases are registered at run
//! time (libtest-mimic), one per case and engine: an engine not selected by
//! BIOCAGE_TEST_ENGINES, or a case that does not apply to an engine's capabilities, is
//! reported as ignored with its reason, never as passed; a selected engine that cannot
//! be reached fails every case.

use std::future::Future;
use std::pin::Pin;

use biocage_conformance::{cases, harness};
use biocage_core::SandboxRuntime;
use libtest_mimic::{Arguments, Completion, Failed, Trial};

/// A case: an async function over a runtime.
type Case = for<'a> fn(&'a dyn SandboxRuntime) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

macro_rules! case {
    ($module:ident :: $case:ident) => {
        (
            concat!(stringify!($module), "::", stringify!($case)),
            (|rt| Box::pin(cases::$module::$case(rt))) as Case,
        )
    };
}

/// Every case of the suite, by module.
fn all_cases() -> Vec<(&'static str, Case)> {
    vec![
        case!(state::seed_state_persistence),
        case!(state::objects_persist),
        case!(state::last_expression_value),
        case!(state::any_python_image_hosts_a_session),
        case!(output::captures_every_writer),
        case!(output::output_is_capped),
        case!(output::protocol_lookalikes_are_plain_output),
        case!(output::background_output_is_not_misattributed),
        case!(errors::seed_error_handling),
        case!(errors::traceback_shows_user_code),
        case!(errors::syntax_error_has_line),
        case!(errors::input_gets_eof),
        case!(timeouts::timeout_interrupts_and_keeps_state),
        case!(timeouts::ignored_interrupt_is_killed),
        case!(timeouts::blocking_call_times_out),
        case!(timeouts::host_interrupt),
        case!(crashes::worker_death_is_survived),
        case!(crashes::killing_everything_reaches_only_user_code),
        case!(crashes::rw_changes_of_a_lost_sandbox_are_never_lost_silently),
        case!(crashes::stdio_sabotage_is_repaired),
        case!(crashes::forked_interpreters_do_not_take_over),
        case!(limits::limits_are_reported),
        case!(limits::unenforceable_limit_refuses_to_start),
        case!(limits::memory_bomb_is_oom),
        case!(limits::fork_bomb_is_bounded),
        case!(lifecycle::hardened_by_default),
        case!(lifecycle::close_removes_container),
        case!(lifecycle::drop_cleans_up),
        case!(lifecycle::restart_is_fresh),
        case!(lifecycle::remove_by_id),
        case!(files::seed_file_and_directory_integration),
        case!(files::seed_temporary_file_creation),
        case!(files::seed_multi_step_workflow),
        case!(files::transfers_refuse_attacks),
        case!(files::plots_return_images),
        case!(files::info_describes_the_session),
        case!(files::a_full_host_disk_never_truncates_a_file),
        case!(files::exposures_with_colons_in_their_paths),
        case!(security::no_network),
        case!(security::network_only_when_enabled),
        case!(security::read_only_root_cannot_be_remounted),
        case!(security::no_privilege),
        case!(security::nothing_of_the_host_or_other_sessions_leaks),
        case!(security::no_devices),
        case!(resources::cpu_spin_is_bounded),
        case!(resources::disks_fill_to_their_size),
        case!(resources::descriptors_and_inodes_run_out_cleanly),
        case!(resources::output_floods_are_capped),
        case!(resources::daemons_die_with_the_interpreter),
        case!(lifecycle::cancelled_caller_leaves_nothing),
        case!(lifecycle::zombies_are_reaped),
        case!(load::parallel_sessions_keep_results_apart),
        case!(hostile::planted_modules_never_run_in_the_agent),
        case!(hostile::forged_results_are_not_trusted),
        case!(hostile::unstoppable_main_thread_cannot_stall_the_supervisor),
        case!(hostile::non_dumpable_interpreter_still_answers),
        case!(hostile::closed_result_pipe_is_a_crash_not_a_stall),
        case!(hostile::unread_commands_cannot_stall_the_supervisor),
        case!(hostile::sandbox_code_cannot_reach_its_supervisor),
        case!(hostile::unencodable_strings_keep_the_session),
        case!(hostile::result_fields_are_capped),
        case!(hostile::large_code_is_capped_and_linear),
        case!(host::rw_exposures_cannot_reach_the_host),
        case!(host::rw_exposure_shapes_cost_little),
        case!(host::swapped_links_never_reach_the_sandbox),
        case!(host::files_in_once_empty_folders_are_copied_back),
        case!(host::sandbox_uids_are_private),
        case!(host::no_view_of_the_host),
        case!(host::kernel_counters_are_not_shared),
        case!(host::shared_memory_is_bounded),
        case!(fidelity::main_module_is_registered),
        case!(fidelity::broken_exceptions_keep_state),
        case!(fidelity::sys_exit_ends_the_run),
        case!(fidelity::notebook_habits),
        case!(fidelity::scripts_run_as_python_runs_them),
        case!(fidelity::error_fields_are_exact),
        case!(scale::pool_hands_out_fresh_sessions),
        case!(scale::pool_survives_engine_errors),
        case!(scale::output_streams_while_running),
        case!(scale::concurrency_is_served),
    ]
}

/// The configurations of the matrix.
const ENGINES: [&str; 8] = harness::CONFIGURATIONS;

fn trial(
    engine: &'static str,
    name: &'static str,
    body: impl FnOnce(&'static str) -> Result<Completion, Failed> + Send + 'static,
) -> Trial {
    Trial::ignorable_test(format!("{name}::{engine}"), move || body(engine))
}

/// Runs `f` on a runtime of its own, as #[tokio::test] would, against `engine`.
fn on_engine(
    engine: &'static str,
    case: &'static str,
    f: impl for<'a> FnOnce(&'a dyn SandboxRuntime) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>
        + Send
        + 'static,
) -> Result<Completion, Failed> {
    if let Some(reason) = harness::not_selected(engine) {
        return Ok(Completion::ignored_with(reason));
    }
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failed::from(format!("tokio runtime: {e}")))?;
    tokio.block_on(async {
        let rt = harness::runtime(engine)
            .await
            .ok_or_else(|| Failed::from(format!("{engine} is not selected")))?;
        f(rt.as_ref()).await;
        Ok(match harness::skipped(engine, case) {
            Some(reason) => Completion::ignored_with(reason),
            None => Completion::Completed,
        })
    })
}

fn main() {
    biocage_conformance::matrix::prepare(&std::env::var(harness::ENGINES_VAR).unwrap_or_default());
    let args = Arguments::from_args();
    let mut trials = Vec::new();
    for (name, case) in all_cases() {
        for engine in ENGINES {
            let short = name.rsplit("::").next().unwrap_or(name);
            trials.push(trial(engine, name, move |engine| {
                on_engine(engine, short, case)
            }));
        }
    }
    for engine in ENGINES {
        trials.push(trial(
            engine,
            "lifecycle::killed_owner_leaves_nothing",
            |engine| {
                on_engine(engine, "killed_owner_leaves_nothing", |rt| {
                    Box::pin(cases::lifecycle::killed_owner_leaves_nothing(
                        rt,
                        env!("CARGO_BIN_EXE_orphan_helper"),
                    ))
                })
            },
        ));
    }
    let conclusion = libtest_mimic::run(&args, trials);
    if conclusion.num_ignored > 0 {
        eprintln!(
            "{} conformance cases did not run (ignored, with the reason on each line above)",
            conclusion.num_ignored
        );
    }
    conclusion.exit();
}
