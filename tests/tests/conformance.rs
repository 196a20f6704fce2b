//! The conformance suite, instantiated for every backend.

use biocage_conformance::{cases, harness};
use rstest::rstest;

macro_rules! conformance {
    ($($module:ident :: $case:ident),* $(,)?) => {$(
        #[rstest]
        #[case::docker("docker")]
        #[case::podman("podman")]
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case(#[case] engine: &str) {
            if let Some(rt) = harness::runtime(engine).await {
                cases::$module::$case(rt.as_ref()).await;
            }
        }
    )*};
}

conformance!(
    state::seed_state_persistence,
    state::objects_persist,
    state::last_expression_value,
    state::any_python_image_hosts_a_session,
    output::captures_every_writer,
    output::output_is_capped,
    output::protocol_lookalikes_are_plain_output,
    output::background_output_is_not_misattributed,
    errors::seed_error_handling,
    errors::traceback_shows_user_code,
    errors::syntax_error_has_line,
    errors::input_gets_eof,
    timeouts::timeout_interrupts_and_keeps_state,
    timeouts::ignored_interrupt_is_killed,
    timeouts::blocking_call_times_out,
    timeouts::host_interrupt,
    crashes::worker_death_is_survived,
    crashes::supervisor_killed_is_survived,
    crashes::stdio_sabotage_is_repaired,
    crashes::forked_interpreters_do_not_take_over,
    limits::limits_are_reported,
    limits::unenforceable_limit_refuses_to_start,
    limits::memory_bomb_is_oom,
    limits::fork_bomb_is_bounded,
    lifecycle::hardened_by_default,
    lifecycle::close_removes_container,
    lifecycle::drop_cleans_up,
    lifecycle::restart_is_fresh,
    lifecycle::remove_by_id,
    files::seed_file_and_directory_integration,
    files::seed_temporary_file_creation,
    files::seed_multi_step_workflow,
    files::transfers_refuse_attacks,
    files::plots_return_images,
    files::info_describes_the_session,
    security::no_network,
    security::network_only_when_enabled,
    security::read_only_root_cannot_be_remounted,
    security::no_privilege,
    security::nothing_of_the_host_or_other_sessions_leaks,
    security::no_devices,
    resources::cpu_spin_is_bounded,
    resources::disks_fill_to_their_size,
    resources::descriptors_and_inodes_run_out_cleanly,
    resources::output_floods_are_capped,
    resources::daemons_die_with_the_interpreter,
    lifecycle::cancelled_caller_leaves_nothing,
    lifecycle::zombies_are_reaped,
    load::parallel_sessions_keep_results_apart,
    hostile::planted_modules_never_run_in_the_agent,
    hostile::forged_results_are_not_trusted,
    hostile::unencodable_strings_keep_the_session,
    hostile::result_fields_are_capped,
    hostile::large_code_is_capped_and_linear,
    host::rw_exposures_cannot_reach_the_host,
    host::rw_exposure_shapes_cost_little,
    host::sandbox_uids_are_private,
    host::no_view_of_the_host,
    host::kernel_counters_are_not_shared,
    host::shared_memory_is_bounded,
    fidelity::main_module_is_registered,
    fidelity::broken_exceptions_keep_state,
    fidelity::sys_exit_ends_the_run,
    fidelity::notebook_habits,
    fidelity::scripts_run_as_python_runs_them,
    fidelity::error_fields_are_exact,
);

#[rstest]
#[case::docker("docker")]
#[case::podman("podman")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_owner_leaves_nothing(#[case] engine: &str) {
    if let Some(rt) = harness::runtime(engine).await {
        cases::lifecycle::killed_owner_leaves_nothing(
            rt.as_ref(),
            env!("CARGO_BIN_EXE_orphan_helper"),
        )
        .await;
    }
}
