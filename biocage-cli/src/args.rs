//! Command-line arguments (clap derive).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Run Python in hardened, stateful sandboxes on Docker or rootless Podman.
#[derive(Debug, Parser)]
#[command(name = "biocage", version, about)]
pub(crate) struct Cli {
    /// Container engine: docker, podman, or auto (Docker, then Podman).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "BIOCAGE_RUNTIME",
        default_value = "auto"
    )]
    pub runtime: RuntimeChoice,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output on stderr (-v: debug, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Which engine to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum RuntimeChoice {
    /// Docker Engine.
    Docker,
    /// Podman (rootless or not).
    Podman,
    /// Docker if it answers, else Podman.
    Auto,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run a Python file (or stdin, with - or nothing) once in a fresh sandbox.
    Run {
        /// File with Python code; - or nothing reads stdin.
        file: Option<PathBuf>,
        /// Arguments for the script, after `--`: `sys.argv[1:]`, as `python FILE ARGS...`.
        #[arg(last = true)]
        args: Vec<String>,
        /// Sandbox settings.
        #[command(flatten)]
        opts: SessionOpts,
    },
    /// An interactive session; with --json, one JSON request per line on stdin.
    Repl {
        /// Keep N sessions started (--json): a {"reset": true} request then hands over a
        /// fresh sandbox at once.
        #[arg(long, value_name = "N")]
        pool: Option<usize>,
        /// Sandbox settings.
        #[command(flatten)]
        opts: SessionOpts,
    },
    /// The sandbox image.
    Image {
        /// What to do with it.
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Check the engine, the image and how each limit is enforced.
    Doctor {
        /// Image to look for.
        #[arg(long, default_value = biocage_core::config::DEFAULT_IMAGE)]
        image: String,
    },
    /// List the sandboxes BioCage manages on the engine.
    Ps,
    /// Remove leftover sandboxes (stopped, or whose owning process is gone); --all removes every one.
    Gc {
        /// Remove every managed sandbox, live ones too.
        #[arg(long)]
        all: bool,
    },
    /// Serve the Model Context Protocol: agents get a persistent, sandboxed Python as
    /// tools, one sandbox per client (stdio; or streamable HTTP with --http and a token).
    Mcp(crate::mcp::McpArgs),
}

/// Image subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum ImageCommand {
    /// Build an image through the engine API: the default one from its recipe, or, with
    /// --requirements or --pyproject, a custom one that adds those packages to --base.
    Build(BuildArgs),
    /// List the BioCage images the engine holds, with their Python, packages and recipe.
    Ls,
}

/// `biocage image build` options.
#[derive(Debug, Clone, Args)]
pub(crate) struct BuildArgs {
    /// A requirements.txt whose packages are added to --base (a custom image; needs --tag).
    #[arg(long, value_name = "FILE", conflicts_with = "pyproject")]
    pub requirements: Option<PathBuf>,
    /// A pyproject.toml whose project dependencies are added to --base (a custom image;
    /// needs --tag).
    #[arg(long, value_name = "FILE")]
    pub pyproject: Option<PathBuf>,
    /// Custom images: the image the packages are added to (default biocage:latest).
    /// Recipe builds: the BASE_IMAGE build argument (any image with python3).
    #[arg(long, value_name = "IMAGE")]
    pub base: Option<String>,
    /// Tag of the new image (recipe builds: biocage:latest if not given).
    #[arg(long, value_name = "NAME")]
    pub tag: Option<String>,
    /// Recipe builds: the folder with the Dockerfile (default python_docker).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["requirements", "pyproject"])]
    pub context: Option<PathBuf>,
    /// For containers that cannot reach a package index. Custom images: a throwaway
    /// sandbox with network downloads the wheels for the base's Python and platform
    /// (pip never runs on the host), and the build installs them without an index.
    /// Recipe builds: CONTEXT/build.sh --offline (a Debian base and host wheels).
    #[arg(long)]
    pub offline: bool,
    /// Custom images: a folder of wheels to install from (repeatable). With --offline
    /// nothing else is used, not even the host's index.
    #[arg(long, value_name = "DIR")]
    pub wheels: Vec<PathBuf>,
    /// Build every step anew (offline: resolve the wheels against the index, not the
    /// host's wheel cache).
    #[arg(long)]
    pub no_cache: bool,
    /// Custom images: allow direct references (`name @ URL`) and source
    /// distributions, fetched and built inside the build's container (never on the
    /// host). Without it only wheels are installed, so no package code runs in a build.
    #[arg(long)]
    pub allow_source: bool,
}

/// Settings shared by run and repl.
#[derive(Debug, Clone, Args)]
pub(crate) struct SessionOpts {
    /// Image with python3.
    #[arg(long, default_value = biocage_core::config::DEFAULT_IMAGE)]
    pub image: String,
    /// Memory limit, e.g. 512m, 2g.
    #[arg(long, default_value = "512m")]
    pub memory: String,
    /// CPU limit in cores, e.g. 1.5.
    #[arg(long, default_value_t = 1.0)]
    pub cpus: f64,
    /// Most processes and threads at once.
    #[arg(long, default_value_t = 256)]
    pub pids: u32,
    /// Time limit of each run, in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
    /// Allow network access (off by default).
    #[arg(long)]
    pub network: bool,
    /// Expose a host file or folder read-only: HOST:CONTAINER.
    #[arg(long, value_name = "HOST:CONTAINER")]
    pub expose: Vec<String>,
    /// Expose a host folder read-write: HOST:CONTAINER. System folders (/, /etc,
    /// /usr, /var, /root, an engine's data-root, ...) are refused.
    #[arg(long, value_name = "HOST:CONTAINER")]
    pub expose_rw: Vec<String>,
    /// Allow --expose-rw of a host system folder, which sandbox code could rewrite.
    #[arg(long)]
    pub force_system_rw: bool,
    /// Environment variable for the code: KEY=VALUE.
    #[arg(long, value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Start even where a limit cannot be enforced (it is reported as unenforced).
    #[arg(long)]
    pub allow_unenforced: bool,
    /// What stands between the code and the host's kernel: a container, or gVisor's
    /// user-space kernel as well (needs runsc registered with the engine).
    #[arg(long, value_enum, default_value_t = IsolationChoice::Container)]
    pub isolation: IsolationChoice,
}

/// `--isolation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum IsolationChoice {
    /// Namespaces, cgroups and seccomp on the host's kernel.
    Container,
    /// gVisor (runsc) in between.
    Gvisor,
}

impl From<IsolationChoice> for biocage_core::Isolation {
    fn from(c: IsolationChoice) -> Self {
        match c {
            IsolationChoice::Container => biocage_core::Isolation::Container,
            IsolationChoice::Gvisor => biocage_core::Isolation::Gvisor,
        }
    }
}
