"""Every setting of xinfd, declared once.

Longer than the usual module because it *is* the documentation: each field of ``Settings`` carries its one
declaration (TOML key = field name, environment variable, kind and check, default, whether SIGHUP may change
it, which processes consume it, and the text of the reference config). Everything else is derived from it:
the loader's tables, ``etc/xinfd.toml`` (``xinfd --print-reference``), ``--print-config``, the table of
settings (``xinfd --settings-table``), SIGHUP's reload rules and the replica context. Adding a setting is one
declaration here plus the code that consumes it.

Consumers: ``daemon`` (read by the daemon process), ``replica`` / ``engine`` (travel to replicas in their
typed ``ReplicaContext.settings``, never as environment variables the replica re-reads), ``xinfctl`` (read by
the command-line client from its own environment).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal

from xinfd.config import checks
from xinfd.config.checks import Check, IPNetwork, Kind
from xinfd.types import GpuInfo

Consumer = Literal["daemon", "replica", "engine", "xinfctl"]
Section = Literal["Server", "Models", "Health checks and replica lifecycle", "Serving", "Access control",
                  "Operations", "GPUs and virtual environments"]
SECTIONS: Final[tuple[Section, ...]] = ("Server", "Models", "Health checks and replica lifecycle", "Serving",
                                        "Access control", "Operations", "GPUs and virtual environments")
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MODEL_SOURCES: Final = ("huggingface", "modelscope", "csghub")
LAUNCH_STRATEGIES: Final = ("IDLE_FIRST_LAUNCH_STRATEGY", "PACK_FIRST_LAUNCH_STRATEGY")
_DECLARATION: Final = "xinfd.setting"


@dataclass(frozen=True, slots=True, kw_only=True)
class Declaration:
    """What the rest of xinfd knows about one setting, besides its name (the TOML key) and Python type."""

    env: str | None
    kind: Kind
    check: Check
    consumers: tuple[Consumer, ...]
    section: Section
    doc: str
    # SIGHUP applies the new value at once (True), or it is kept until the daemon restarts (False).
    reload: bool = False
    spec: str | None = None  # the Xinference spec's words for the variable, quoted in the reference file
    example: str | None = None  # shown (commented) in the reference when there is no default to show
    shown_default: str | None = None  # for defaults derived from another setting ("<home>/xinfd.sock")
    flag: str | None = None  # the daemon's command-line flag, if any
    secret: bool = False  # printed as "***" by --print-config and `xinfctl config`
    # A misspelling of this setting's name stops the daemon instead of a warning: silently ignoring it would
    # leave the API or the control socket more open than the operator asked for.
    guards_access: bool = False
    # The text form (environment variable) of a kind that has no generic one ("tables"); else checks.from_text.
    parse_text: Callable[[str], object] | None = None


def setting(default: Any = MISSING, **declaration: Any) -> Any:
    """A ``Settings`` field with its declaration attached (``dataclasses.field`` metadata)."""
    meta = {_DECLARATION: Declaration(**declaration)}
    if default is MISSING:
        return field(metadata=meta)
    if isinstance(default, tuple | str | int | float | bool | type(None)):
        return field(default=default, metadata=meta)
    raise TypeError(f"setting default must be immutable, got {type(default).__name__}")


def _no_sources() -> Mapping[str, str]:
    return MappingProxyType({})


_SECONDS = checks.seconds(allow_zero=False)
_SECONDS_OR_ZERO = checks.seconds(allow_zero=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """The effective configuration of one daemon. Built by ``load_settings``; plain data, no behaviour.

    ``sources`` maps each setting to where its value came from: ``"default"``, ``"file /path/x.toml"``,
    ``"env XINFERENCE_X"`` or ``"flag --port"``. ``warnings`` lists names in the file or in our variable
    namespaces that are not settings (with the closest known name).
    """

    # ---- Server
    home: Path = setting(
        env="XINFERENCE_HOME", kind="path", check=checks.path, consumers=("daemon", "xinfctl"), section="Server",
        doc="Directory for xinfd's files: model venvs (virtualenv/v4/...), downloaded models, state.json, logs. "
        "Under systemd the unit sets it to /var/lib/xinfd.",
        spec="By default, Xinference uses <HOME>/.xinference as home path to store necessary files such as logs "
        "and models", shown_default="~/.xinference")
    host: str = setting(
        "127.0.0.1", env="XINFD_HOST", kind="str", check=checks.host, consumers=("daemon",), section="Server",
        flag="--host",
        doc='Address the OpenAI-compatible API (/v1/*, /metrics, /health) listens on. Use "0.0.0.0" or "::" to '
        "listen on all interfaces (then consider allowed_ips and api_keys).")
    port: int = setting(
        9997, env="XINFD_PORT", kind="int", check=checks.at_least(0, 65535), consumers=("daemon",),
        section="Server", flag="--port",
        doc="TCP port of the OpenAI-compatible API, 0..65535 (0: any free port; `xinfctl status` shows it).")
    control_socket: Path = setting(
        env="XINFD_CONTROL_SOCKET", kind="path", check=checks.path, consumers=("daemon", "xinfctl"),
        section="Server", shown_default="~/.xinference/xinfd.sock",
        doc="Unix socket of the control API used by xinfctl (launch, list, terminate, venvs, gpus). "
        "Default: <home>/xinfd.sock.")
    daemon_name: str | None = setting(
        None, env="XINFD_DAEMON_NAME", kind="str", check=checks.non_empty, consumers=("daemon",),
        section="Server", shown_default="<hostname>", example='"gpu-node-07"',
        doc="Name of this daemon in the X-Xinfd-Host header of every front-end response and in /health, so "
        "clients and load-balancer logs can tell which host answered. Unset: the machine's hostname.")
    log_level: str = setting(
        "INFO", env="XINFD_LOG_LEVEL", kind="str", check=checks.choice(LOG_LEVELS, upper=True),
        consumers=("daemon",), section="Server", flag="--log-level", reload=True,
        doc="Log level of the daemon: DEBUG, INFO, WARNING, ERROR or CRITICAL (case-insensitive).")
    endpoint: str = setting(
        "http://127.0.0.1:9997", env="XINFERENCE_ENDPOINT", kind="str", check=checks.url,
        consumers=("xinfctl",), section="Server",
        doc="Endpoint of the service as clients reach it (an http:// or https:// URL); `xinfctl chat` uses it.",
        spec="Endpoint of Xinference, used to connect to Xinference service.")
    max_connections: int = setting(
        1024, env="XINFD_MAX_CONNECTIONS", kind="int", check=checks.at_least(1), consumers=("daemon",),
        section="Server", reload=True,
        doc="Open connections each socket (the API and the control socket) accepts at once (>= 1); one more is "
        "answered 503 and closed, so idle or slow clients cannot use up the daemon's file descriptors. The "
        "daemon raises its descriptor limit to the hard limit at start and lowers this cap to fit under it.")
    max_connections_per_peer: int = setting(
        256, env="XINFD_MAX_CONNECTIONS_PER_PEER", kind="int", check=checks.at_least(1), consumers=("daemon",),
        section="Server", reload=True,
        doc="Open connections one client accepts at once (>= 1): per IP address on the API (the socket peer, "
        "so a reverse proxy is one client), per user id on the control socket. One more is answered 503.")
    request_head_timeout: float = setting(
        10.0, env="XINFD_REQUEST_HEAD_TIMEOUT", kind="seconds", check=_SECONDS, consumers=("daemon",),
        section="Server", reload=True,
        doc="Seconds a new connection has to send its first request line and headers (> 0); a silent or "
        "trickling client is disconnected after that, on both sockets.")
    request_body_timeout: float = setting(
        60.0, env="XINFD_REQUEST_BODY_TIMEOUT", kind="seconds", check=_SECONDS, consumers=("daemon",),
        section="Server", reload=True,
        doc="Seconds a client has to send a request body once its headers arrived (> 0); a slower one gets "
        "408 Request Timeout.")
    keepalive_timeout: float = setting(
        15.0, env="XINFD_KEEPALIVE_TIMEOUT", kind="seconds", check=_SECONDS, consumers=("daemon",),
        section="Server",
        doc="Seconds an idle keep-alive connection stays open between requests (> 0), on both sockets.")
    # ---- Models
    model_src: str = setting(
        "huggingface", env="XINFERENCE_MODEL_SRC", kind="str", check=checks.choice(MODEL_SOURCES, upper=False),
        consumers=("daemon",), section="Models",
        doc='Model hub used for downloading models: "huggingface", "modelscope" or "csghub".',
        spec="Modelhub used for downloading models.")
    download_max_attempts: int = setting(
        3, env="XINFERENCE_DOWNLOAD_MAX_ATTEMPTS", kind="int", check=checks.at_least(1), consumers=("daemon",),
        section="Models", doc="Maximum download retry attempts for model files (>= 1).",
        spec="Maximum download retry attempts for model files.")
    csg_token: str | None = setting(
        None, env="XINFERENCE_CSG_TOKEN", kind="str", check=checks.non_empty, consumers=("daemon",),
        section="Models", secret=True, example='"..."',
        doc='Authentication token for the CSGHub model source. A secret: --print-config prints it as "***".',
        spec="Authentication token for CSGHub model source. Default is unset.")
    csg_endpoint: str = setting(
        "https://hub-stg.opencsg.com/", env="XINFERENCE_CSG_ENDPOINT", kind="str", check=checks.url,
        consumers=("daemon",), section="Models",
        doc="CSGHub endpoint for the model source (an http:// or https:// URL).",
        spec="CSGHub endpoint for model source.")
    launch: tuple[str, ...] = setting(
        (), env="XINFD_LAUNCH", kind="list", check=checks.launch_list, consumers=("daemon",), section="Models",
        flag="--launch",
        doc='Models launched when the daemon starts: "NAME" or "NAME:REPLICAS" (replicas >= 1, default 1). A '
        "flag or the environment variable (comma-separated) replaces this list, it does not extend it.")
    # ---- Health checks and replica lifecycle
    health_check_failure_threshold: int = setting(
        5, env="XINFERENCE_HEALTH_CHECK_FAILURE_THRESHOLD", kind="int", check=checks.at_least(1),
        consumers=("daemon",), section="Health checks and replica lifecycle",
        doc="Failed health checks tolerated before a replica is considered dead (>= 1).",
        spec="The maximum number of failed health checks tolerated at Xinference startup.")
    health_check_interval: float = setting(
        5.0, env="XINFERENCE_HEALTH_CHECK_INTERVAL", kind="seconds", check=_SECONDS, consumers=("daemon",),
        section="Health checks and replica lifecycle", doc="Seconds between health checks (> 0).",
        spec="Health check interval (seconds) at Xinference startup.")
    health_check_timeout: float = setting(
        10.0, env="XINFERENCE_HEALTH_CHECK_TIMEOUT", kind="seconds", check=_SECONDS, consumers=("daemon",),
        section="Health checks and replica lifecycle",
        doc="Seconds a health check may take before it counts as failed (> 0).",
        spec="Health check timeout (seconds) at Xinference startup.")
    disable_health_check: bool = setting(
        False, env="XINFERENCE_DISABLE_HEALTH_CHECK", kind="bool", check=checks.same, consumers=("daemon",),
        section="Health checks and replica lifecycle", doc="Turn health checks off.",
        spec="Setting this environment to 1 can disable health check.")
    launch_timeout: float = setting(
        600.0, env="XINFD_LAUNCH_TIMEOUT", kind="seconds", check=_SECONDS, consumers=("daemon",),
        section="Health checks and replica lifecycle",
        doc="Seconds a replica may take to become ready, model loading included (> 0).")
    stop_grace_period: float = setting(
        10.0, env="XINFD_STOP_GRACE_PERIOD", kind="seconds", check=_SECONDS, consumers=("daemon",),
        section="Health checks and replica lifecycle",
        doc="Seconds between SIGTERM and SIGKILL when a replica's process group is stopped (> 0).")
    replica_max_concurrency: int = setting(
        64, env="XINFD_REPLICA_MAX_CONCURRENCY", kind="int", check=checks.at_least(1), consumers=("daemon",),
        section="Health checks and replica lifecycle", reload=True,
        doc="Requests one replica serves at once (>= 1); more wait in the model's queue for the least busy "
        "replica. SIGHUP applies it to running models.")
    model_queue_size: int = setting(
        256, env="XINFD_MODEL_QUEUE_SIZE", kind="int", check=checks.at_least(0), consumers=("daemon",),
        section="Health checks and replica lifecycle", reload=True,
        doc="Requests that may wait per model when every replica is at its cap (>= 0); beyond that a request "
        "gets 429 Too Many Requests with Retry-After. SIGHUP applies it to running models.")
    replica_wait_timeout: float = setting(
        15.0, env="XINFD_REPLICA_WAIT_TIMEOUT", kind="seconds", check=_SECONDS_OR_ZERO, consumers=("daemon",),
        section="Health checks and replica lifecycle", reload=True,
        doc="Seconds a request waits for a restarting replica of its model (>= 0) before it gets 503 with "
        "Retry-After; a replica that comes back within it serves the request.")
    restart_backoff: float = setting(
        0.5, env="XINFD_RESTART_BACKOFF", kind="seconds", check=_SECONDS, consumers=("daemon",),
        section="Health checks and replica lifecycle",
        doc="A replica that exits (or fails its health checks) is restarted after this many seconds (> 0), "
        "doubling on each further restart up to 30 s.")
    restart_budget: int = setting(
        5, env="XINFD_RESTART_BUDGET", kind="int", check=checks.at_least(0), consumers=("daemon",),
        section="Health checks and replica lifecycle",
        doc="Restarts in a row (>= 0) before a replica is FAILED, with its exit status and the last lines of its "
        "log shown by `xinfctl list`. A replica READY for 60 s starts a new count.")
    # ---- Serving
    disable_metrics: bool = setting(
        False, env="XINFERENCE_DISABLE_METRICS", kind="bool", check=checks.same, consumers=("daemon",),
        section="Serving", doc="Turn the /metrics endpoint off.",
        spec="Setting this environment to 1 will disable the /metrics endpoint")
    ui: bool = setting(
        True, env="XINFD_UI", kind="bool", check=checks.same, consumers=("daemon",), section="Serving",
        doc="Serve the web console at /ui (static files; everything it shows comes from the HTTP management "
        "API, so it needs a key from admin_api_keys, entered in the page). 0: no /ui route.")
    inference_pool_metrics: bool = setting(
        False, env="XINFD_INFERENCE_POOL_METRICS", kind="bool", check=checks.same, consumers=("daemon",),
        section="Serving", reload=True,
        doc="Add to /metrics the gauges a Kubernetes InferencePool's endpoint picker reads (the Gateway API "
        "Inference Extension's model server protocol, under vLLM's names: vllm:num_requests_waiting, "
        "vllm:num_requests_running, vllm:lora_requests_info). Off by default: the names are vLLM's, and a "
        "Prometheus that also scrapes vLLM would count this daemon as a vLLM server.")
    sse_ping_attempts_seconds: float = setting(
        600.0, env="XINFERENCE_SSE_PING_ATTEMPTS_SECONDS", kind="seconds", check=_SECONDS,
        consumers=("daemon",), section="Serving", reload=True,
        doc="Server-Sent Events keepalive ping interval, in seconds (> 0).",
        spec="Server-Sent Events keepalive ping interval (seconds).")
    max_tokens: int | None = setting(
        None, env="XINFERENCE_MAX_TOKENS", kind="int", check=checks.at_least(1), consumers=("daemon",),
        section="Serving", reload=True, example="4096",
        doc="Global cap on completion tokens per request (>= 1), for every engine: the daemon lowers a larger "
        "max_tokens (or sets it when a request has none) in each request it forwards. Unset: no cap.",
        spec="Global max tokens limit override for requests. Default is unset.")
    default_max_tokens: int = setting(
        1024, env="XINFD_DEFAULT_MAX_TOKENS", kind="int", check=checks.at_least(1), consumers=("daemon",),
        section="Serving", reload=True,
        doc="Completion budget of a request that sets neither max_tokens nor max_completion_tokens, when its "
        "model family declares no default_max_tokens (>= 1). Never above the family's context_length, and "
        "max_tokens (the cap) still wins. 1024 is a long answer for a chat model yet ends a runaway generation "
        "in seconds on a GPU and in about a minute for a small model on 2 CPU cores.")
    batch_size: int = setting(
        32, env="XINFERENCE_BATCH_SIZE", kind="int", check=checks.at_least(1), consumers=("engine",),
        section="Serving", doc="Requests per continuous batch of the engines that batch (>= 1). A new value "
        "applies to replicas started after a daemon restart.",
        spec="Default batch size used by the server when batching is enabled.")
    batch_interval: float = setting(
        0.003, env="XINFERENCE_BATCH_INTERVAL", kind="seconds", check=_SECONDS_OR_ZERO, consumers=("engine",),
        section="Serving", doc="Seconds an engine waits to gather a batch (>= 0). A new value applies to replicas "
        "started after a daemon restart.",
        spec="Default batching interval (seconds).")
    text_to_image_batching_size: str | None = setting(
        None, env="XINFERENCE_TEXT_TO_IMAGE_BATCHING_SIZE", kind="str", check=checks.image_size,
        consumers=("engine",), section="Serving", example='"1024*1024"',
        doc='Continuous batching for text-to-image models at this image size, "WIDTH*HEIGHT": requests of that '
        "size arriving together run as one pipeline batch (diffusers engine). Unset: one request at a time.",
        spec="Enable continuous batching for text-to-image models by specifying the target image size (e.g., "
        "1024*1024). Default is unset.")
    image_url_lifetime: float = setting(
        3600.0, env="XINFD_IMAGE_URL_LIFETIME", kind="seconds", check=_SECONDS, consumers=("daemon",),
        section="Serving", reload=True,
        doc="Images answered as response_format=url are kept under <home>/images/ and served at "
        "/v1/images/files/<name> for this many seconds (> 0), then removed.")
    # ---- Access control
    allowed_ips: tuple[IPNetwork, ...] = setting(
        (), env="XINFERENCE_ALLOWED_IPS", kind="list", check=checks.networks, consumers=("daemon",),
        section="Access control", reload=True, guards_access=True,
        doc='Clients allowed to use the API: IP addresses or CIDR blocks, IPv4 or IPv6 (comma-separated in the '
        'environment, e.g. "10.0.0.0/8,::1"). Empty: no restriction.',
        spec="Restrict access to specified IPs or CIDR blocks. Default is unset (no restriction).")
    trusted_proxies: tuple[IPNetwork, ...] = setting(
        (), env="XINFD_TRUSTED_PROXIES", kind="list", check=checks.networks, consumers=("daemon",),
        section="Access control", reload=True, guards_access=True,
        doc="Reverse proxies whose X-Forwarded-For header is believed when checking allowed_ips (IPs or CIDR "
        "blocks).")
    api_keys: tuple[str, ...] = setting(
        (), env="XINFD_API_KEYS", kind="list", check=checks.keys, consumers=("daemon",), section="Access control",
        reload=True, secret=True, guards_access=True,
        doc='API keys accepted as "Authorization: Bearer <key>". Empty: no authentication. Secrets, printed as '
        '"***". If you list them here, make this file readable only by the service; or use the variable.')
    metrics_api_keys: tuple[str, ...] = setting(
        (), env="XINFD_METRICS_API_KEYS", kind="list", check=checks.keys, consumers=("daemon",),
        section="Access control", reload=True, secret=True, guards_access=True,
        doc="API keys that may only read /metrics, for a Prometheus scraper; api_keys have the inference and "
        'metrics scopes. /health never needs a key. Secrets, printed as "***".')
    admin_api_keys: tuple[str, ...] = setting(
        (), env="XINFD_ADMIN_API_KEYS", kind="list", check=checks.keys, consumers=("daemon",),
        section="Access control", reload=True, secret=True, guards_access=True,
        doc="API keys that may also manage the daemon over HTTP (launch, terminate, registrations, venvs, the "
        "/control API of a remote xinfctl); they have every scope. Empty: HTTP management is refused (403) and "
        'the control socket is the only way to manage. Secrets, printed as "***".')
    control_socket_group: str | None = setting(
        None, env="XINFD_CONTROL_SOCKET_GROUP", kind="str", check=checks.group_name, consumers=("daemon",),
        section="Access control", example='"xinfd-admin"', guards_access=True,
        doc="Group of the control socket: when set, the socket is created with mode 0660 and this group, and "
        "members of the group may use xinfctl. Unset: mode 0600, only the daemon's user (and root).")
    control_allowed_users: tuple[str, ...] = setting(
        (), env="XINFD_CONTROL_ALLOWED_USERS", kind="list", check=checks.principals("user"),
        consumers=("daemon",), section="Access control", reload=True, guards_access=True,
        doc="Further users (names or numeric ids) allowed on the control socket, checked with SO_PEERCRED on "
        "every request (the socket's mode alone is not trusted).")
    control_allowed_groups: tuple[str, ...] = setting(
        (), env="XINFD_CONTROL_ALLOWED_GROUPS", kind="list", check=checks.principals("group"),
        consumers=("daemon",), section="Access control", reload=True, guards_access=True,
        doc="Further groups (names or numeric ids) allowed on the control socket, checked with SO_PEERCRED.")
    allowed_hosts: tuple[str, ...] = setting(
        (), env="XINFD_ALLOWED_HOSTS", kind="list", check=checks.host_names, consumers=("daemon",),
        section="Access control", reload=True, guards_access=True, example='["xinfd.internal", "*.example.com"]',
        doc="Host header values the API answers besides its bind address, localhost, 127.0.0.1 and [::1] (any "
        'port): names, "*.domain", or "*" for any. Other Host values get 421, so a web page cannot reach a '
        "keyless daemon through DNS rebinding. When listening on 0.0.0.0 or ::, any IP address is accepted "
        "too, and any name once api_keys are set (a browser cannot send the key); list names here to serve "
        "them without keys.")
    cors_allowed_origins: tuple[str, ...] = setting(
        (), env="XINFD_CORS_ALLOWED_ORIGINS", kind="list", check=checks.origins, consumers=("daemon",),
        section="Access control", reload=True, guards_access=True, example='["https://app.example.com"]',
        doc='Browser origins (scheme://host[:port], or "*") allowed to call the API cross-origin; they get CORS '
        "headers and answered preflights. Empty: every request carrying a foreign Origin header is refused "
        "with 403.")
    allow_direct_references: bool = setting(
        False, env="XINFD_ALLOW_DIRECT_REFERENCES", kind="bool", check=checks.same, consumers=("daemon",),
        section="Access control", reload=True, guards_access=True,
        doc="Accept direct references (name @ file:///..., name @ https://..., name @ git+...) in a launch's "
        "--virtual-env-package. Off: they and paths (./pkg, pkg.whl) are refused, because installing a package "
        "runs its code as the daemon's user, so anyone on the control socket could run anything. A local "
        "package is written as name @ file:///path once this is on.")
    allow_loader_env: bool = setting(
        False, env="XINFD_ALLOW_LOADER_ENV", kind="bool", check=checks.same, consumers=("daemon",),
        section="Access control", reload=True, guards_access=True,
        doc="Accept variables that make the replica's loader or interpreter run other code (PATH, LD_*, "
        "PYTHONPATH, PYTHONHOME, HOME, ...) in a launch's --env. Off: they are refused.")
    # ---- Operations
    drain_grace: float = setting(
        0.0, env="XINFD_DRAIN_GRACE", kind="seconds", check=_SECONDS_OR_ZERO, consumers=("daemon",),
        section="Operations", reload=True,
        doc="On SIGTERM, /health and /health/models/<uid> answer 503 at once, but new requests are still "
        "served for this many seconds (>= 0), so a load balancer has time to see the failed health check "
        "and move traffic away; then the drain below starts. Behind HAProxy set it above the check's inter x "
        "fall; in Kubernetes above the readiness probe's periodSeconds x failureThreshold. 0: refuse at once.")
    drain_timeout: float = setting(
        30.0, env="XINFD_DRAIN_TIMEOUT", kind="seconds", check=_SECONDS_OR_ZERO, consumers=("daemon",),
        section="Operations", reload=True,
        doc="After drain_grace, new requests get 503 (with Connection: close) while running requests get this "
        "many seconds to finish (>= 0); then the replicas stop. Keep TimeoutStopSec of the systemd unit above "
        "drain_grace + drain_timeout + stop_grace_period.")
    stream_write_timeout: float = setting(
        30.0, env="XINFD_STREAM_WRITE_TIMEOUT", kind="seconds", check=_SECONDS, consumers=("daemon",),
        section="Operations", reload=True,
        doc="A streaming client that does not read for this many seconds is cut off (> 0), so a stuck reader "
        "cannot hold a replica's sequence and the daemon's buffers forever.")
    log_max_bytes: int = setting(
        10 * 1024 * 1024, env="XINFD_LOG_MAX_BYTES", kind="int", check=checks.at_least(4096),
        consumers=("daemon",), section="Operations",
        doc="Logs under $XINFERENCE_HOME/logs are rotated when larger than this (>= 4096 bytes).")
    log_backups: int = setting(
        3, env="XINFD_LOG_BACKUPS", kind="int", check=checks.at_least(1, 100), consumers=("daemon",),
        section="Operations", doc="Rotated logs kept (1..100), as NAME.log.1 ... NAME.log.N.")
    # ---- GPUs and virtual environments
    allow_multi_replica_per_gpu: bool = setting(
        True, env="XINFERENCE_ALLOW_MULTI_REPLICA_PER_GPU", kind="bool", check=checks.same,
        consumers=("daemon",), section="GPUs and virtual environments",
        doc="Allow more than one replica on a single GPU.",
        spec="Whether to allow multiple replicas on a single GPU. Default value is 1 (enabled).")
    launch_strategy: str = setting(
        "IDLE_FIRST_LAUNCH_STRATEGY", env="XINFERENCE_LAUNCH_STRATEGY", kind="str",
        check=checks.choice(LAUNCH_STRATEGIES, upper=True), consumers=("daemon",),
        section="GPUs and virtual environments",
        doc="GPU allocation strategy for replicas: IDLE_FIRST_LAUNCH_STRATEGY (spread over idle GPUs first) or "
        "PACK_FIRST_LAUNCH_STRATEGY (fill a GPU before using the next).",
        spec="GPU allocation strategy for replicas.")
    cpu_threads_per_replica: int = setting(
        0, env="XINFD_CPU_THREADS_PER_REPLICA", kind="int", check=checks.at_least(0), consumers=("daemon",),
        section="GPUs and virtual environments",
        doc="Threads of each replica that runs on the CPU (torch, OpenMP, MKL, llama.cpp), >= 0. 0 splits the "
        "daemon's cores between its CPU replicas, pinning each to its own cores when there are enough; a "
        "launch's --cpu-threads or --env OMP_NUM_THREADS overrides it for that model.")
    fork_server: bool = setting(
        True, env="XINFD_FORK_SERVER", kind="bool", check=checks.same, consumers=("daemon",),
        section="GPUs and virtual environments",
        doc="Fork the CPU replicas of engines with heavy imports (transformers, sentence_transformers, diffusers) "
        "from a process that imported them once per interpreter and environment, so a second launch, a "
        "scale-up or a restart skips those imports (about 2.5 s for transformers). Off: every replica is a "
        "fresh interpreter. Replicas on GPUs are always fresh interpreters.")
    preload_engines: tuple[str, ...] = setting(
        (), env="XINFD_PRELOAD_ENGINES", kind="list", check=checks.engine_names, consumers=("daemon",),
        section="GPUs and virtual environments", example='["transformers"]',
        doc="Engines whose fork server starts with the daemon (for the daemon's own interpreter: launches "
        "without a model venv), so even the first launch skips the imports; each costs the memory of its "
        "imports while the daemon runs (about 250 MiB for transformers). Needs fork_server.")
    enable_virtual_env: bool = setting(
        True, env="XINFERENCE_ENABLE_VIRTUAL_ENV", kind="bool", check=checks.same, consumers=("daemon",),
        section="GPUs and virtual environments", doc="Give each model its own virtual environment, built with "
        "uv at launch (a launch's --enable-virtual-env / --disable-virtual-env overrides it).",
        spec="Enable model virtual environments globally. Default value is 1 (enabled, starting from v2.0).")
    virtual_env_skip_installed: bool = setting(
        True, env="XINFERENCE_VIRTUAL_ENV_SKIP_INSTALLED", kind="bool", check=checks.same, consumers=("daemon",),
        section="GPUs and virtual environments",
        doc="Skip packages already present in the system site-packages when creating virtual environments.",
        spec="Skip packages already present in system site-packages when creating virtual environments.")
    virtual_env_build_timeout: float = setting(
        1800.0, env="XINFD_VIRTUAL_ENV_BUILD_TIMEOUT", kind="seconds", check=_SECONDS, consumers=("daemon",),
        section="GPUs and virtual environments",
        doc='Seconds a model venv build (uv create, resolve, install, probe) may take before the launch fails '
        'with "venv build timed out"; uv is killed and the half-built venv removed.')
    virtual_env_stall_timeout: float = setting(
        30.0, env="XINFD_VIRTUAL_ENV_STALL_TIMEOUT", kind="seconds", check=_SECONDS, consumers=("daemon",),
        section="GPUs and virtual environments",
        doc="Seconds a model venv build waits on a package index that stops answering: uv's UV_HTTP_TIMEOUT "
        "(one retry), and the probe of each index before the build (at most 10 s). An unreachable extra index "
        "is skipped with a warning naming its host; an unreachable primary index fails the launch at once. "
        "While uv is silent the launch events say, every 10 s, which indexes it is waiting on.")
    wheel_cache: Path = setting(
        env="XINFD_WHEEL_CACHE", kind="path", check=checks.path, consumers=("daemon",),
        section="GPUs and virtual environments", shown_default="~/.xinference/cache/wheels",
        doc="Folder of wheels that engines want built from source with their own settings (llama-cpp-python is "
        'built with CMAKE_ARGS="-DGGML_NATIVE=OFF" so it runs on any x86-64 CPU). Each is built once and reused '
        "by every later venv; several daemons may share the folder. Default: <home>/cache/wheels.")
    gpus: tuple[GpuInfo, ...] = setting(
        (), env="XINFD_GPUS", kind="tables", check=checks.gpu_tables, parse_text=checks.gpus_from_text,
        consumers=("daemon",), section="GPUs and virtual environments",
        doc="GPUs declared by hand instead of discovered through NVML (a host or container without a driver the "
        "daemon can reach, or tests). Declared GPUs replace NVML's inventory; `xinfctl gpus` says where the "
        "inventory came from. In this file: [[gpus]] tables, at its end. In the environment: "
        f"{checks.GPU_TEXT_FORM} (the name is what lies between the first and the last colon), or the same "
        "fields as JSON for a name that holds a comma; the variable replaces the file's tables.",
        example='XINFD_GPUS="0:NVIDIA A100-SXM4-80GB:81920,1:NVIDIA A100-SXM4-80GB:81920"')
    sources: Mapping[str, str] = field(default_factory=_no_sources)
    warnings: tuple[str, ...] = ()


def declarations() -> dict[str, Declaration]:
    """Setting name -> its declaration, in declaration order."""
    return {
        f.name: f.metadata[_DECLARATION] for f in dataclasses.fields(Settings) if _DECLARATION in f.metadata
    }


DECLARATIONS: Final[Mapping[str, Declaration]] = MappingProxyType(declarations())
# Environment variable -> setting.
ENV_VARS: Final[Mapping[str, str]] = MappingProxyType(
    {decl.env: name for name, decl in DECLARATIONS.items() if decl.env is not None}
)
RELOADABLE: Final = frozenset(name for name, decl in DECLARATIONS.items() if decl.reload)
SECRET_FIELDS: Final = frozenset(name for name, decl in DECLARATIONS.items() if decl.secret)
# Keys a config file may hold: every setting ("gpus" as [[gpus]] tables).
TOML_KEYS: Final = frozenset(DECLARATIONS)
# Names in our namespaces that are not settings but are read on purpose, so they are never reported as unknown.
OTHER_VARIABLES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "XINFD_CONFIG": "the config file to read (instead of /etc/xinfd/xinfd.toml)",
        "XINFD_DISABLE_PLUGIN_AUTOLOAD": "skip plugins found through the 'xinfd' entry-point group",
        "XINFD_PLUGINS": "extra plugin modules to load (module or module:attr, comma-separated)",
        "XINFD_WORKER_CONTEXT": "a replica's context, set by the daemon for its worker process",
        "XINFD_API_KEY": "the API key xinfctl sends to the front end",
    }
)
