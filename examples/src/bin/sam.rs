//! `sam`: the SAM SDK's command line.
//!
//! - `sam run`: run one task end to end on the embedded defaults (SQLite in the data
//!   directory, nodes as local `sam-vm-agent` processes, the demo agent by default);
//!   `--provider qemu` runs the node in a VM on this machine instead.
//! - `sam image build`: build the Debian image QEMU nodes boot from.
//! - `sam down`: stop the nodes of a data directory.
//! - `sam submit`, `sam status`, `sam watch`, `sam logs`, `sam list`, `sam cancel`,
//!   `sam retry`, `sam fork`, `sam nodes`, `sam catalog`: talk to a `sam-server`
//!   (`--server` or `SAM_SERVER`, `--token` or `SAM_API_TOKEN`).
//! - `sam cloud-init`: print the cloud-init user-data a node would boot with, so an
//!   operator can preview exactly what the node will run.
//!
//! Hidden: `sam vm-agent`, `sam demo-agent` and `sam git-credential` run those roles from this executable,
//! for when `sam-vm-agent` and `sam-demo-agent` are not built next to it
//! (`cargo run --bin sam` builds only `sam`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use sam_cloudinit::NodeBoot;
use sam_core::{LayerSettings, Location, ProviderKind, Secret, TaskStatus, VmSize};
use sam_examples::client::{self, Client};
use sam_examples::embedded::{self, Embedded, EmbeddedOptions};
use sam_examples::exit::{EXIT_CODES_HELP, Exit, UsageError};
use sam_examples::quickstart::{Progress, RunRequest, run_task_until};
use sam_examples::roles::Role;
use sam_examples::server::SubmitBody;
use sam_examples::watch::Output;

/// A parser that accepts exactly `values` by their names (so `--help` and the
/// completion scripts list them), as a closed set of sam-core's vocabulary.
fn one_of<T>(values: &[T], name: fn(T) -> &'static str) -> impl TypedValueParser<Value = T>
where
    T: Copy + FromStr + Send + Sync + 'static,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    PossibleValuesParser::new(values.iter().map(|v| name(*v))).try_map(|s| s.parse::<T>())
}

fn sizes() -> impl TypedValueParser<Value = VmSize> {
    one_of(&VmSize::ALL, VmSize::as_str)
}

fn providers() -> impl TypedValueParser<Value = ProviderKind> {
    one_of(&ProviderKind::ALL, ProviderKind::as_str)
}

fn statuses() -> impl TypedValueParser<Value = TaskStatus> {
    one_of(&TaskStatus::ALL, TaskStatus::as_str)
}

/// Run AI coding agents on cloud VMs.
#[derive(Debug, Parser)]
#[command(name = "sam", version, after_help = EXIT_CODES_HELP)]
struct Cli {
    /// Log what the embedded control plane and its clients do, on stderr: `-v` at
    /// INFO, `-vv` at DEBUG (`RUST_LOG` overrides). Without it only the progress shows.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one task end to end on this machine, and wait for it.
    Run(RunArgs),
    /// The helper roles (`vm-agent`, `demo-agent`, `git-credential`), hidden.
    #[command(flatten)]
    Role(Role),
    /// Print a completion script for SHELL (`sam completions bash > /etc/bash_completion.d/sam`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Stop every node of a data directory: local node processes and QEMU VMs.
    Down {
        /// The data directory (`.sam` for `sam run`, `.sam-server` for the server).
        #[arg(long, default_value = ".sam")]
        data_dir: PathBuf,
    },
    /// Build the base image QEMU nodes boot from.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Print the cloud-init user-data a node boots with (it includes the callback token).
    CloudInit(CloudInitArgs),
    /// Submit a task to a server.
    Submit(SubmitArgs),
    /// Show a task of a server.
    Status {
        #[command(flatten)]
        server: ServerArgs,
        /// The task.
        id: String,
        /// Print the task as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Follow a task of a server until it ends, with the agent's text as it streams
    /// (exit 0 only when it completed).
    Watch {
        #[command(flatten)]
        server: ServerArgs,
        /// The task.
        id: String,
        /// Print each event as a JSON line (NDJSON) on stdout, then the task as JSON
        /// instead of the summary.
        #[arg(long)]
        json: bool,
    },
    /// Print what the agent of a task said and did: its text, thoughts, tool calls,
    /// plan, retries, the task's steps and final status.
    Logs {
        #[command(flatten)]
        server: ServerArgs,
        /// The task.
        id: String,
        /// Then follow the task's new events until it ends (exit as `watch` does).
        #[arg(long, short)]
        follow: bool,
        /// Print the events as JSON lines (NDJSON), one event per line.
        #[arg(long)]
        json: bool,
    },
    /// List a server's nodes with their health and boot timeline.
    Nodes {
        #[command(flatten)]
        server: ServerArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a finished task's prompt again, as a new task.
    Retry {
        #[command(flatten)]
        server: ServerArgs,
        /// The task.
        id: String,
        /// Follow the new task until it ends, as `sam watch` does.
        #[arg(long)]
        watch: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Continue from a task with a new prompt, as a new task.
    Fork {
        #[command(flatten)]
        server: ServerArgs,
        /// The task.
        id: String,
        /// What the agent should do next.
        #[arg(long)]
        prompt: String,
        /// Follow the new task until it ends, as `sam watch` does.
        #[arg(long)]
        watch: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List a server's tasks.
    List {
        #[command(flatten)]
        server: ServerArgs,
        /// Only tasks in these statuses.
        #[arg(long, value_delimiter = ',', value_parser = statuses())]
        status: Vec<TaskStatus>,
        /// Only tasks after this one (the cursor a previous page printed).
        #[arg(long)]
        after: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a task of a server.
    Cancel {
        #[command(flatten)]
        server: ServerArgs,
        /// The task.
        id: String,
    },
    /// Show a server's sizes and what they run on.
    Catalog {
        #[command(flatten)]
        server: ServerArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct ServerArgs {
    /// The server's base URL.
    #[arg(long, env = "SAM_SERVER", default_value = "http://127.0.0.1:8080/")]
    server: url::Url,
    /// The API token.
    #[arg(long, env = "SAM_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl ServerArgs {
    fn client(&self) -> anyhow::Result<Client> {
        Client::new(self.server.clone(), self.token.clone().map(Secret::new))
    }
}

#[derive(Debug, Args)]
struct SubmitArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The repository: a URL, or a local path (sent as an absolute path).
    #[arg(long, default_value = ".")]
    repo: String,
    /// The agent: demo, claude, codex, gemini, opencode (or custom) [default: the server's].
    #[arg(long)]
    agent: Option<String>,
    /// The provider [default: the server's].
    #[arg(long, value_parser = providers())]
    provider: Option<ProviderKind>,
    #[command(flatten)]
    task: TaskArgs,
    /// Follow the task until it ends, as `sam watch` does.
    #[arg(long)]
    watch: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// What the agent should do.
    prompt: String,
}

/// The settings of a task that `sam submit` and `sam run` share.
#[derive(Debug, Args)]
struct TaskArgs {
    /// The branch to start from [default: the repository's default branch].
    #[arg(long)]
    branch: Option<String>,
    /// An explicit size: never downgraded.
    #[arg(long, value_parser = sizes())]
    size: Option<VmSize>,
    /// An explicit location.
    #[arg(long)]
    location: Option<Location>,
    /// A devcontainer configuration name.
    #[arg(long)]
    devcontainer: Option<String>,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The repository to work on (a local git repository).
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// Where state lives: the database, the nodes, handed-over workspaces.
    #[arg(long, default_value = ".sam")]
    data_dir: PathBuf,
    /// The agent: demo (no model, works offline), claude, codex, gemini or opencode.
    #[arg(long, default_value = "demo", conflicts_with = "agent_command")]
    agent: String,
    /// Any ACP agent, as a shell command (run as the `custom` agent).
    #[arg(long)]
    agent_command: Option<String>,
    /// Print one JSON object at the end instead of the summary.
    #[arg(long)]
    json: bool,
    /// Where the task's node runs: `local` (a `sam-vm-agent` process on this
    /// machine) or `qemu` (a VM on this machine, booted from the image of
    /// `sam image build`, as a cloud node boots; needs `sam-vm-agent` built next to
    /// `sam`).
    #[arg(long, value_enum, default_value_t = RunProvider::Local)]
    provider: RunProvider,
    /// With `--provider qemu`: the image directory `sam image build` printed
    /// [default: the default recipe's image in the user's cache].
    #[arg(long)]
    qemu_image: Option<PathBuf>,
    /// With `--provider qemu`: the loopback port of an apt proxy (apt-cacher-ng:
    /// 3142), for a bare image whose boot installs packages.
    #[arg(long)]
    qemu_apt_proxy_port: Option<u16>,
    #[command(flatten)]
    task: TaskArgs,
    /// What the agent should do.
    prompt: String,
}

/// Where `sam run` runs its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RunProvider {
    /// A `sam-vm-agent` process on this machine.
    Local,
    /// A QEMU VM on this machine.
    Qemu,
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Build the Debian image QEMU nodes boot from (debootstrap; needs root and a few
    /// minutes), or find it already built; prints its directory.
    Build(ImageBuildArgs),
}

#[derive(Debug, Args)]
struct ImageBuildArgs {
    /// Where images are cached [default: $XDG_CACHE_HOME/sam/images or ~/.cache/sam/images].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// A package to pre-bake besides the base set (repeatable): what the nodes'
    /// boot would otherwise install, such as nodejs and npm.
    #[arg(long = "package")]
    packages: Vec<String>,
    /// The Debian mirror [default: http://deb.debian.org/debian].
    #[arg(long)]
    mirror: Option<String>,
    /// Leave out what the nodes' boot installs (curl, git, …), as on a cloud
    /// provider's stock image; its nodes need an apt proxy
    /// (`--qemu-apt-proxy-port`).
    #[arg(long)]
    bare: bool,
    /// Print the image as JSON.
    #[arg(long)]
    json: bool,
}

/// `sam down`: stops the local and QEMU nodes under the data directory.
async fn down(data_dir: &Path) -> anyhow::Result<()> {
    let stopped = embedded::stop_nodes(data_dir).await?;
    for (kind, id) in &stopped {
        println!("stopped {kind} node {id}");
    }
    if stopped.is_empty() {
        println!("no node runs under {}", data_dir.display());
    }
    Ok(())
}

/// `sam image build`: progress on stderr, the image's directory (or JSON) on stdout.
fn image_build(args: &ImageBuildArgs) -> anyhow::Result<()> {
    use sam_providers::qemu::{ImageRecipe, image};
    let mut recipe = ImageRecipe {
        extra_packages: args.packages.clone(),
        bare: args.bare,
        ..ImageRecipe::default()
    };
    if let Some(mirror) = &args.mirror {
        recipe.mirror.clone_from(mirror);
    }
    let cache = match &args.cache_dir {
        Some(dir) => dir.clone(),
        None => image::default_cache_dir()?,
    };
    let built = image::build(&recipe, &cache, &mut |stage, elapsed| {
        eprintln!("[{:>5.0}s] {}", elapsed.as_secs_f64(), stage.describe());
    })?;
    let dir = built
        .disk
        .parent()
        .map_or_else(|| cache.clone(), Path::to_path_buf);
    if args.json {
        let value = serde_json::json!({
            "dir": dir,
            "key": recipe.key(),
            "disk": built.disk,
            "kernel": built.kernel,
            "initrd": built.initrd,
            "packages": recipe.packages(),
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("{}", dir.display());
    }
    Ok(())
}

#[derive(Debug, Args)]
struct CloudInitArgs {
    /// The node's id.
    #[arg(long)]
    node_id: String,
    /// The control plane's base URL (https; plain http only for loopback).
    #[arg(long)]
    control_plane_url: String,
    /// A file holding the node's callback token.
    #[arg(long)]
    callback_token_file: PathBuf,
    /// Swap file size in MiB, 0 to 65536; 0 disables swap [default: 2048].
    #[arg(long)]
    swap_mb: Option<u32>,
    /// vm.swappiness, 0 to 100 [default: 60].
    #[arg(long)]
    swappiness: Option<u32>,
    /// The cloud the node runs on [default: hetzner].
    #[arg(long, value_parser = providers())]
    provider: Option<ProviderKind>,
    /// The VM agent binary's SHA-256 (64 hex digits): the node installs only that binary.
    #[arg(long)]
    agent_sha256: String,
    /// Where the node downloads the VM agent [default: <control plane>/v1/agent/download].
    #[arg(long)]
    agent_download_url: Option<String>,
    /// The agents whose ACP adapters the node installs, comma-separated
    /// [default: claude,codex,gemini,opencode].
    #[arg(long, value_delimiter = ',')]
    agents: Option<Vec<String>>,
}

fn main() -> ExitCode {
    // Usage errors exit 2 (clap's own code); `--help` and `--version` exit 0.
    let cli = Cli::parse();
    match cli.verbose {
        0 => {}
        1 => sam_examples::logging::init_at(sam_examples::logging::LogFormat::Text, "info"),
        _ => sam_examples::logging::init_at(sam_examples::logging::LogFormat::Text, "debug"),
    }
    let outcome = match cli.command {
        Command::CloudInit(args) => cloud_init(&args).map(|()| Exit::Success),
        Command::Image(ImageCommand::Build(args)) => image_build(&args).map(|()| Exit::Success),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut completed(), "sam", &mut std::io::stdout());
            Ok(Exit::Success)
        }
        command => runtime().and_then(|rt| rt.block_on(serve(command))),
    };
    match outcome {
        Ok(exit) => exit.into(),
        // The reader went away (`sam logs … | head`): nothing more to say, as other
        // tools do.
        Err(err) if sam_examples::exit::is_broken_pipe(&err) => Exit::Success.into(),
        Err(err) => {
            match err.downcast_ref::<sam_cloudinit::Error>() {
                Some(sam_cloudinit::Error::Invalid { errors }) => {
                    eprintln!("error: invalid node boot input");
                    for field in errors {
                        eprintln!("  {field}");
                    }
                }
                _ => eprintln!("error: {err:#}"),
            }
            Exit::of_error(&err).into()
        }
    }
}

/// The commands that need a runtime.
async fn serve(command: Command) -> anyhow::Result<Exit> {
    match command {
        Command::Run(args) => run(args).await,
        Command::Down { data_dir } => down(&data_dir).await.map(|()| Exit::Success),
        Command::Submit(args) => submit(args).await,
        Command::Watch { server, id, json } => watch(&server.client()?, &id, json).await,
        Command::Logs {
            server,
            id,
            follow,
            json,
        } => {
            let output = if json { Output::Json } else { Output::Text };
            sam_examples::watch::logs(&server.client()?, &id, follow, output).await
        }
        Command::Status { server, id, json } => {
            let client = server.client()?;
            let task = client.task(&id).await?;
            let last_message = if json {
                None
            } else {
                sam_examples::watch::last_message(&client, &id).await
            };
            print_json_or(json, &task, || task.summary(last_message.as_deref()))?;
            Ok(Exit::Success)
        }
        Command::List {
            server,
            status,
            after,
            limit,
            json,
        } => {
            let list = server
                .client()?
                .list(&status, after.as_deref(), limit)
                .await?;
            print_json_or(json, &list, || client::task_table(&list))?;
            Ok(Exit::Success)
        }
        Command::Cancel { server, id } => {
            let cancelled = server.client()?.cancel(&id).await?;
            println!("task {} {}", cancelled.id, cancelled.status);
            Ok(Exit::Success)
        }
        Command::Retry {
            server,
            id,
            watch: follow,
            json,
        } => {
            let client = server.client()?;
            let accepted = client.retry(&id).await?;
            accepted_then(&client, &accepted, follow, json).await
        }
        Command::Fork {
            server,
            id,
            prompt,
            watch: follow,
            json,
        } => {
            let client = server.client()?;
            let accepted = client.fork(&id, &prompt).await?;
            accepted_then(&client, &accepted, follow, json).await
        }
        Command::Nodes { server, json } => {
            let nodes = server.client()?.nodes().await?;
            print_json_or(json, &nodes, || {
                client::node_table(&nodes, chrono::Utc::now())
            })?;
            Ok(Exit::Success)
        }
        Command::Catalog { server, json } => {
            let catalog = server.client()?.catalog().await?;
            print_json_or(json, &catalog, || client::catalog_text(&catalog))?;
            Ok(Exit::Success)
        }
        Command::Role(role) => role.run().await.map(|()| Exit::Success),
        Command::CloudInit(_) | Command::Image(_) | Command::Completions { .. } => {
            unreachable!("handled without a runtime")
        }
    }
}

/// The command line as completion scripts offer it: without the hidden helper
/// roles, which clap_complete would otherwise list (it completes hidden
/// subcommands).
fn completed() -> clap::Command {
    use clap::CommandFactory as _;
    let full = Cli::command();
    clap::Command::new("sam")
        .version(env!("CARGO_PKG_VERSION"))
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|c| !c.is_hide_set()).cloned())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Checks, before any node is touched, that `sam run` can run: the repository is
/// a git repository, and for local nodes the agent's command is on `PATH`.
///
/// # Errors
/// A [`UsageError`] saying what is missing.
fn preflight(args: &RunArgs) -> anyhow::Result<()> {
    let git = std::process::Command::new("git")
        .args(["rev-parse", "--git-dir"])
        .current_dir(&args.repo)
        .output();
    match git {
        Ok(out) if out.status.success() => {}
        Ok(_) => {
            return Err(UsageError(format!(
                "{} is not a git repository: sam run works on a local git repository (`git init` one, or pass --repo)",
                args.repo.display()
            ))
            .into());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && args.repo.is_dir() => {
            return Err(UsageError("git is not installed: sam run needs it".into()).into());
        }
        Err(_) => {
            return Err(UsageError(format!(
                "cannot find the repository {}",
                args.repo.display()
            ))
            .into());
        }
    }
    // A QEMU node installs its agents on the VM; a local one runs them from this PATH.
    if args.provider != RunProvider::Local {
        return Ok(());
    }
    let program = match &args.agent_command {
        Some(command) => command.split_whitespace().next().map(str::to_owned),
        None => sam_agent::vm::acp::KNOWN_AGENTS
            .iter()
            .find(|(name, _, _)| *name == args.agent)
            .map(|(_, program, _)| (*program).to_owned()),
    };
    if let Some(program) = program
        && !on_path(&program)
    {
        let hint = match sam_agent::vm::acp::agent_package(&args.agent) {
            Some(package) if args.agent_command.is_none() => {
                format!(": `npm install -g {package}` installs it; `--agent demo` needs nothing")
            }
            _ => String::new(),
        };
        return Err(UsageError(format!(
            "the agent's command `{program}` is not on PATH{hint}"
        ))
        .into());
    }
    Ok(())
}

/// Whether `program` (a path, or a name looked up on `PATH`) is an executable file.
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    let executable = |path: &Path| {
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        return executable(Path::new(program));
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| executable(&dir.join(program))))
}

/// `sam run`: exit 0 only when the task completed.
async fn run(args: RunArgs) -> anyhow::Result<Exit> {
    preflight(&args)?;
    // One run per data directory, and it drives its own task only (what an earlier
    // run left live is ended, `Leftovers::Cancel`). The lock comes before anything
    // touches the directory.
    let _run_lock = embedded::lock_runs(&args.data_dir)?;
    let mut options = EmbeddedOptions::new(&args.data_dir)?;
    let agent = match &args.agent_command {
        Some(command) => {
            options.agent_command = Some(command.clone());
            embedded::CUSTOM_AGENT.to_owned()
        }
        None => args.agent.clone(),
    };
    // The agent's key (read from this environment by `EmbeddedOptions::new`) travels
    // with each task, so a warm node started by an earlier run, without the key or
    // with another, runs this run's agent with this key.
    options.leftovers = embedded::Leftovers::Cancel;
    let runner = match args.provider {
        RunProvider::Local => {
            if args.qemu_image.is_some() || args.qemu_apt_proxy_port.is_some() {
                anyhow::bail!("--qemu-image and --qemu-apt-proxy-port are for --provider qemu");
            }
            Runner::Embedded(Box::new(Embedded::start(options).await?))
        }
        RunProvider::Qemu => Runner::Server(Box::new(qemu_server(&args, options).await?)),
    };
    let embedded = runner.embedded();
    for id in &embedded.cancelled_leftovers {
        eprintln!("note: cancelled task {id}, which an earlier run left unfinished");
    }
    let request = RunRequest {
        repo: args.repo.clone(),
        prompt: args.prompt.clone(),
        agent,
        branch: args.task.branch.clone(),
        settings: LayerSettings {
            size: args.task.size,
            location: args.task.location.clone(),
            devcontainer: args.task.devcontainer.clone(),
            ..LayerSettings::default()
        },
    };
    let interrupted = Arc::new(AtomicBool::new(false));
    let interrupt = {
        let interrupted = Arc::clone(&interrupted);
        async move {
            sam_examples::node::shutdown_signal().await;
            interrupted.store(true, Ordering::SeqCst);
            // A second interrupt exits at once, leaving the cancel to the sweeps.
            tokio::spawn(async {
                sam_examples::node::shutdown_signal().await;
                eprintln!("interrupted again: exiting without waiting");
                std::process::exit(i32::from(Exit::Interrupted.code()));
            });
        }
    };
    let outcome = run_task_until(embedded, &request, Progress::Auto, interrupt).await;
    runner.shutdown().await;
    let outcome = outcome?;
    if args.json {
        println!("{}", serde_json::to_string(&outcome)?);
    } else {
        println!("{}", outcome.summary());
    }
    Ok(if interrupted.load(Ordering::SeqCst) {
        Exit::Interrupted
    } else {
        Exit::of_status(outcome.status)
    })
}

/// What runs `sam run`'s task: the embedded control plane alone (local nodes call
/// back to its loopback callback server), or, for QEMU nodes, the whole server,
/// whose routes a VM needs besides the callbacks (the agent's download, the served
/// repository).
enum Runner {
    Embedded(Box<Embedded>),
    Server(Box<sam_examples::server::Server>),
}

impl Runner {
    fn embedded(&self) -> &Embedded {
        match self {
            Self::Embedded(embedded) => embedded,
            Self::Server(server) => &server.embedded,
        }
    }

    async fn shutdown(self) {
        match self {
            Self::Embedded(embedded) => embedded.shutdown().await,
            Self::Server(server) => server.shutdown().await,
        }
    }
}

/// A server for `sam run --provider qemu`: `sam-server --provider qemu`'s assembly,
/// listening on the loopback port the data directory's earlier runs used (its warm
/// VMs forward to that port), with `options`' agents and credentials.
async fn qemu_server(
    args: &RunArgs,
    options: EmbeddedOptions,
) -> anyhow::Result<sam_examples::server::Server> {
    use sam_examples::config::ServerConfig;
    use sam_examples::server::{Server, ServerOptions};
    let mut config: ServerConfig = serde_json::from_value(serde_json::json!({
        "provider": "qemu",
        "data_dir": args.data_dir,
        "qemu_image": args.qemu_image,
        "qemu_apt_proxy_port": args.qemu_apt_proxy_port,
    }))
    .context("cannot build the QEMU server's configuration")?;
    embedded::private_dir(&args.data_dir)?;
    let listener = embedded::remembered_loopback_listener(&args.data_dir).await?;
    config.listen = listener.local_addr()?;
    config.validate()?;
    let mut server = ServerOptions::from_config(&config)?;
    server.embedded.agent_command = options.agent_command;
    server.embedded.agent_credentials = options.agent_credentials;
    server.embedded.leftovers = options.leftovers;
    Server::start_on(listener, server).await
}

fn print_json_or<T: serde::Serialize>(
    json: bool,
    value: &T,
    text: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(value)?);
    } else {
        println!("{}", text());
    }
    Ok(())
}

/// `sam submit`: prints the task id, or follows it with `--watch`.
async fn submit(args: SubmitArgs) -> anyhow::Result<Exit> {
    // A local path is sent absolute: the server's local provider clones it from there.
    let repo = match std::fs::canonicalize(&args.repo) {
        Ok(path) if !args.repo.contains("://") => path.display().to_string(),
        _ => args.repo.clone(),
    };
    let body = SubmitBody {
        repo: Some(repo),
        prompt: Some(args.prompt.clone()),
        branch: args.task.branch.clone(),
        agent: args.agent.clone(),
        size: args.task.size,
        location: args.task.location.clone(),
        provider: args.provider,
        devcontainer: args.task.devcontainer.clone(),
        ..SubmitBody::default()
    };
    let client = args.server.client()?;
    let accepted = client.submit(&body).await?;
    accepted_then(&client, &accepted, args.watch, args.json).await
}

/// After a new task was accepted: follows it (`follow`), or prints its id.
async fn accepted_then(
    client: &Client,
    accepted: &sam_examples::server::Accepted,
    follow: bool,
    json: bool,
) -> anyhow::Result<Exit> {
    if follow {
        return watch(client, &accepted.id, json).await;
    }
    print_json_or(json, accepted, || accepted.id.clone())?;
    Ok(Exit::Success)
}

/// `sam watch`: exits as the task ended (0 only when it completed).
async fn watch(client: &Client, id: &str, json: bool) -> anyhow::Result<Exit> {
    let output = if json { Output::Json } else { Output::Text };
    let (task, last_message) = sam_examples::watch::watch(client, id, output).await?;
    print_json_or(json, &task, || task.summary(last_message.as_deref()))?;
    Ok(Exit::of_status(task.status))
}

fn cloud_init(args: &CloudInitArgs) -> anyhow::Result<()> {
    let mut boot = NodeBoot::new(
        args.node_id.as_str(),
        args.control_plane_url.as_str(),
        read_token(&args.callback_token_file)?,
        args.agent_sha256.as_str(),
    );
    boot.agent_download_url.clone_from(&args.agent_download_url);
    if let Some(agents) = &args.agents {
        boot.agents.clone_from(agents);
    }
    if let Some(swap_mb) = args.swap_mb {
        boot.swap_mb = swap_mb;
    }
    if let Some(swappiness) = args.swappiness {
        boot.swappiness = swappiness;
    }
    if let Some(provider) = args.provider {
        boot.provider = provider;
    }
    print!("{}", boot.render()?.expose());
    Ok(())
}

/// Reads a token file, dropping the line end an editor or `echo` leaves behind.
fn read_token(path: &Path) -> anyhow::Result<Secret> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the callback token file {}", path.display()))?;
    Ok(Secret::new(text.trim_end_matches(['\n', '\r'])))
}
