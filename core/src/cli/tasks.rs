//! `sluice tasks list|test|states-for-dag-run` (Airflow's names).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail};
use serde_json::json;
use sluice_operator_api::{Connections, Registry};
use tokio_util::sync::CancellationToken;

use super::table::Table;
use super::{print_json, show_time, Output};
use crate::dag::{Dag, DagBag};
use crate::executor::{task_test_log, Executor, TryOutcome};
use crate::settings::Settings;
use crate::store;

/// `tasks list` arguments.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// The DAG id.
    pub dag_id: String,
    /// Print the tasks as a tree: each task under the tasks it depends on.
    #[arg(short, long)]
    pub tree: bool,
}

/// `tasks test` arguments.
#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// The DAG id.
    pub dag_id: String,
    /// The task id.
    pub task_id: String,
    /// The interval that starts at the latest fire time ≤ this instant (default: the latest
    /// complete interval).
    pub logical_date: Option<String>,
    /// Run configuration as a JSON object (overrides params, and the existing run's conf).
    #[arg(short, long)]
    pub conf: Option<String>,
}

/// `tasks states-for-dag-run` arguments.
#[derive(Debug, clap::Args)]
pub struct StatesArgs {
    /// The DAG id.
    pub dag_id: String,
    /// The run id.
    pub run_id: String,
    /// How to print.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
}

fn find_dag(settings: &Settings, registry: &Registry, dag_id: &str) -> anyhow::Result<Arc<Dag>> {
    let bag = DagBag::load(&settings.dags_folder, registry);
    bag.get(dag_id).cloned().ok_or_else(|| {
        let known: Vec<&str> = bag.dags.keys().map(String::as_str).collect();
        anyhow!(
            "DAG `{dag_id}` not found in {}; known DAGs: {}",
            bag.folder.display(),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )
    })
}

/// `tasks list`: the DAG's task ids in its order, or as a tree.
pub fn list(args: &ListArgs, settings: &Settings, registry: &Registry) -> anyhow::Result<ExitCode> {
    let dag = find_dag(settings, registry, &args.dag_id)?;
    if !args.tree {
        for task in &dag.tasks {
            println!("{}", task.id);
        }
        return Ok(ExitCode::SUCCESS);
    }
    fn print_tree(dag: &Dag, task: usize, depth: usize) {
        let t = &dag.tasks[task];
        println!("{}{} ({})", "    ".repeat(depth), t.id, t.operator_name);
        for &down in &t.downstream {
            print_tree(dag, down, depth + 1);
        }
    }
    for (i, task) in dag.tasks.iter().enumerate() {
        if task.upstream.is_empty() {
            print_tree(&dag, i, 0);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `tasks states-for-dag-run`: each task instance of a run with its state and try.
pub async fn states(args: &StatesArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let store = store::open(&settings.database_url).await?;
    let run = store
        .run(&args.dag_id, &args.run_id)
        .await?
        .ok_or_else(|| anyhow!("no run `{}` for DAG `{}`", args.run_id, args.dag_id))?;
    let tis = store.task_instances(&args.dag_id, &args.run_id).await?;
    match args.output {
        Output::Json => {
            let items: Vec<_> = tis
                .iter()
                .map(|ti| {
                    json!({
                        "dag_id": ti.dag_id,
                        "run_id": ti.run_id,
                        "logical_date": run.logical_date,
                        "task_id": ti.task_id,
                        "state": ti.state.as_str(),
                        "try_number": ti.try_number,
                        "max_tries": ti.max_tries,
                        "start_date": ti.started_at,
                        "end_date": ti.ended_at,
                    })
                })
                .collect();
            print_json(&items)?;
        }
        Output::Plain => {
            for ti in &tis {
                println!("{}\t{}\t{}", ti.task_id, ti.state, ti.try_number);
            }
        }
        Output::Table => {
            let mut table = Table::new(&["task_id", "state", "try", "start_date", "end_date"]);
            for ti in &tis {
                table.row(vec![
                    ti.task_id.clone(),
                    ti.state.to_string(),
                    format!("{}/{}", ti.try_number, ti.max_tries),
                    show_time(ti.started_at),
                    show_time(ti.ended_at),
                ]);
            }
            print!("{}", table.render());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints what a log file gains from `offset` on; returns the new offset.
fn print_new(path: &std::path::Path, offset: u64) -> u64 {
    use std::io::{Read, Seek, SeekFrom, Write};
    let Ok(mut file) = std::fs::File::open(path) else {
        return offset;
    };
    if file.seek(SeekFrom::Start(offset)).is_err() {
        return offset;
    }
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    // Whole lines only: a line being written is printed with the next poll.
    let end = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&buf[..end]);
    let _ = out.flush();
    offset + end as u64
}

/// `tasks test`: one try of one task, its log on stdout, nothing recorded; exit 0 iff it
/// succeeded.
pub async fn test(
    args: &TestArgs,
    settings: &Settings,
    registry: &Registry,
) -> anyhow::Result<ExitCode> {
    let dag = find_dag(settings, registry, &args.dag_id)?;
    if dag.task(&args.task_id).is_none() {
        let ids: Vec<&str> = dag.tasks.iter().map(|t| t.id.as_str()).collect();
        bail!(
            "DAG `{}` has no task `{}`; its tasks: {}",
            dag.dag_id,
            args.task_id,
            ids.join(", ")
        );
    }
    let conf = args
        .conf
        .as_deref()
        .map(|c| super::trigger::parse_conf(Some(c)))
        .transpose()?;
    let interval = super::trigger::interval_for(&dag, args.logical_date.as_deref())?;
    let store = store::open(&settings.database_url).await?;
    let executor = Executor::new(store, settings, Arc::new(Connections::from_env()));
    let scratch: PathBuf = settings.home.join("tasks-test");
    let log = task_test_log(&scratch, &dag.dag_id, &args.task_id);
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: stopping the task");
            on_signal.cancel();
        }
    });
    eprintln!(
        "testing task {} of {} for data interval {interval} (nothing is recorded)",
        args.task_id, dag.dag_id
    );
    // The log is followed while the try runs.
    let done = CancellationToken::new();
    let follower = {
        let done = done.clone();
        let log = log.clone();
        tokio::spawn(async move {
            let mut offset = 0;
            loop {
                offset = print_new(&log, offset);
                if done.is_cancelled() {
                    return;
                }
                tokio::select! {
                    _ = done.cancelled() => {}
                    _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
                }
            }
        })
    };
    let result = executor
        .test_task(&dag, &args.task_id, interval, conf, &log, &scratch, cancel)
        .await;
    done.cancel();
    let _ = follower.await;
    let tested = result?;
    match &tested.upstream_run {
        Some(run) => eprintln!(
            "run {run} exists for this logical date: the try saw its upstream outputs and try number {}",
            tested.try_number
        ),
        None => eprintln!(
            "no run for this logical date: the try saw run id {} and no upstream outputs",
            tested.run_id
        ),
    }
    Ok(match &tested.outcome {
        TryOutcome::Success { output } => {
            println!("{}: success (not recorded)", args.task_id);
            if !output.values.is_empty() {
                println!(
                    "output: {}",
                    serde_json::Value::Object(output.values.clone())
                );
            }
            if let Some(table) = &output.table {
                println!(
                    "table: {} ({} rows) under {}",
                    table.location,
                    table
                        .rows
                        .map(|r| r.to_string())
                        .unwrap_or_else(|| "?".into()),
                    scratch.join("artifacts").display()
                );
            }
            ExitCode::SUCCESS
        }
        TryOutcome::Failure { kind, message } => {
            println!(
                "{}: failed ({}): {message}",
                args.task_id,
                match kind {
                    sluice_operator_api::FailureKind::Retryable => "retryable",
                    sluice_operator_api::FailureKind::Fatal => "fatal",
                }
            );
            ExitCode::FAILURE
        }
        TryOutcome::Cancelled => {
            println!("{}: cancelled", args.task_id);
            ExitCode::FAILURE
        }
    })
}
