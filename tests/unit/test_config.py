"""Settings: layering, parsing of every variable, error messages, describe() round trip."""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest

from xinfd import config
from xinfd.config import ENV_VARS, Settings, describe, load_settings, parse_launch_item
from xinfd.errors import ConfigError
from xinfd.types import GpuInfo


@pytest.fixture(autouse=True)
def _no_system_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A real /etc/xinfd/xinfd.toml on the test machine must not leak into the tests.
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", tmp_path / "absent" / "xinfd.toml")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def write_toml(tmp_path: Path) -> Callable[[str], Path]:
    def write(text: str) -> Path:
        path = tmp_path / "xinfd.toml"
        path.write_text(text, encoding="utf-8")
        return path

    return write


def values(settings: Settings, *, without: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        f.name: getattr(settings, f.name)
        for f in dataclasses.fields(Settings)
        if f.name not in ("sources", *without)
    }


def test_defaults(home: Path) -> None:
    settings = load_settings(env={"HOME": str(home)})
    assert settings.home == home / ".xinference"
    assert settings.control_socket == home / ".xinference" / "xinfd.sock"
    assert settings.host == "127.0.0.1"
    assert settings.port == 9997
    assert settings.log_level == "INFO"
    assert settings.endpoint == "http://127.0.0.1:9997"
    assert settings.model_src == "huggingface"
    assert settings.health_check_failure_threshold == 5
    assert settings.health_check_interval == 5.0
    assert settings.health_check_timeout == 10.0
    assert settings.disable_health_check is False
    assert settings.disable_metrics is False
    assert settings.download_max_attempts == 3
    assert settings.text_to_image_batching_size is None
    assert settings.sse_ping_attempts_seconds == 600.0
    assert settings.max_tokens is None
    assert settings.allowed_ips == ()
    assert settings.trusted_proxies == ()
    assert settings.api_keys == ()
    assert settings.batch_size == 32
    assert settings.batch_interval == 0.003
    assert settings.allow_multi_replica_per_gpu is True
    assert settings.launch_strategy == "IDLE_FIRST_LAUNCH_STRATEGY"
    assert settings.enable_virtual_env is True
    assert settings.virtual_env_skip_installed is True
    assert settings.csg_token is None
    assert settings.csg_endpoint == "https://hub-stg.opencsg.com/"
    assert settings.stop_grace_period == 10.0
    assert settings.launch_timeout == 600.0
    assert settings.gpus == ()
    assert settings.launch == ()
    assert set(settings.sources.values()) == {"default"}
    assert set(settings.sources) == {f.name for f in dataclasses.fields(Settings)} - {"sources", "warnings"}


def test_precedence_file_env_cli(home: Path, write_toml: Callable[[str], Path]) -> None:
    path = write_toml("port = 1111\nlog_level = 'debug'\nbatch_size = 7\n")
    env = {"HOME": str(home), "XINFD_PORT": "2222", "XINFD_LOG_LEVEL": "warning"}

    from_file = load_settings(config_path=path, env={"HOME": str(home)})
    assert from_file.port == 1111
    assert from_file.sources["port"] == f"file {path}"

    from_env = load_settings(config_path=path, env=env)
    assert (from_env.port, from_env.log_level, from_env.batch_size) == (2222, "WARNING", 7)
    assert from_env.sources["port"] == "env XINFD_PORT"
    assert from_env.sources["batch_size"] == f"file {path}"

    from_cli = load_settings(config_path=path, env=env, cli={"port": 3333, "log_level": None, "host": "::"})
    assert (from_cli.port, from_cli.log_level, from_cli.host) == (3333, "WARNING", "::")
    assert from_cli.sources["port"] == "flag --port"
    assert from_cli.sources["log_level"] == "env XINFD_LOG_LEVEL"
    assert from_cli.sources["host"] == "flag --host"
    assert from_cli.sources["health_check_interval"] == "default"


def test_cli_strings_are_parsed_like_env_and_launch_replaces(home: Path) -> None:
    settings = load_settings(
        env={"HOME": str(home), "XINFD_LAUNCH": "a,b:2"},
        cli={"port": "8080", "log_level": "error", "launch": ["c:3"]},
    )
    assert settings.port == 8080
    assert settings.log_level == "ERROR"
    assert settings.launch == ("c:3",)
    assert settings.sources["launch"] == "flag --launch"


def test_cli_errors_name_the_flag(home: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--port: must be an integer between 0 and 65535, got 70000$"):
        load_settings(env={"HOME": str(home)}, cli={"port": 70000})

    with pytest.raises(ConfigError, match=r"^--gpus: "):
        load_settings(env={"HOME": str(home)}, cli={"gpus": []})


def test_control_socket_follows_home_unless_set(tmp_path: Path) -> None:
    settings = load_settings(env={"XINFERENCE_HOME": str(tmp_path / "h")})
    assert settings.control_socket == tmp_path / "h" / "xinfd.sock"
    assert settings.sources["control_socket"] == "default"
    settings = load_settings(
        env={"XINFERENCE_HOME": str(tmp_path / "h"), "XINFD_CONTROL_SOCKET": str(tmp_path / "c.sock")}
    )
    assert settings.control_socket == tmp_path / "c.sock"


def test_relative_paths_in_file_are_relative_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "xinfd.toml"
    path.parent.mkdir()
    path.write_text('home = "state"\n', encoding="utf-8")
    assert load_settings(config_path=path, env={}).home == tmp_path / "conf" / "state"


def test_empty_env_var_is_unset(home: Path) -> None:
    settings = load_settings(env={"HOME": str(home), "XINFERENCE_BATCH_SIZE": "", "XINFD_PORT": "  "})
    assert settings.batch_size == 32
    assert settings.sources["batch_size"] == "default"


ENV_CASES: list[tuple[str, str, Any]] = [
    ("XINFERENCE_HOME", "/srv/xinf", Path("/srv/xinf")),
    ("XINFD_HOST", "0.0.0.0", "0.0.0.0"),
    ("XINFD_PORT", "8000", 8000),
    ("XINFD_CONTROL_SOCKET", "/run/xinfd/control.sock", Path("/run/xinfd/control.sock")),
    ("XINFD_LOG_LEVEL", "debug", "DEBUG"),
    ("XINFERENCE_ENDPOINT", "https://xinf.example.com:8443", "https://xinf.example.com:8443"),
    ("XINFERENCE_MODEL_SRC", "ModelScope", "modelscope"),
    ("XINFERENCE_HEALTH_CHECK_FAILURE_THRESHOLD", "9", 9),
    ("XINFERENCE_HEALTH_CHECK_INTERVAL", "2.5", 2.5),
    ("XINFERENCE_HEALTH_CHECK_TIMEOUT", "30", 30.0),
    ("XINFERENCE_DISABLE_HEALTH_CHECK", "1", True),
    ("XINFERENCE_DISABLE_METRICS", "Yes", True),
    ("XINFD_UI", "0", False),
    ("XINFERENCE_DOWNLOAD_MAX_ATTEMPTS", "5", 5),
    ("XINFERENCE_TEXT_TO_IMAGE_BATCHING_SIZE", "1024*768", "1024*768"),
    ("XINFERENCE_SSE_PING_ATTEMPTS_SECONDS", "15", 15.0),
    ("XINFERENCE_MAX_TOKENS", "4096", 4096),
    ("XINFD_DEFAULT_MAX_TOKENS", "512", 512),
    (
        "XINFERENCE_ALLOWED_IPS",
        "10.0.0.0/8, 192.168.1.7",
        (ip_network("10.0.0.0/8"), ip_network("192.168.1.7")),
    ),
    ("XINFD_TRUSTED_PROXIES", "127.0.0.1,::1", (ip_network("127.0.0.1"), ip_network("::1"))),
    ("XINFD_API_KEYS", "sk-one, sk-two", ("sk-one", "sk-two")),
    ("XINFD_METRICS_API_KEYS", "scrape", ("scrape",)),
    ("XINFD_ADMIN_API_KEYS", "sk-admin", ("sk-admin",)),
    ("XINFD_CONTROL_SOCKET_GROUP", "xinfd-admin", "xinfd-admin"),
    ("XINFD_CONTROL_ALLOWED_USERS", "root, 4242", ("root", "4242")),
    ("XINFD_CONTROL_ALLOWED_GROUPS", "0", ("0",)),
    ("XINFD_DRAIN_TIMEOUT", "0", 0.0),
    ("XINFD_VIRTUAL_ENV_STALL_TIMEOUT", "12", 12.0),
    ("XINFD_DRAIN_GRACE", "7.5", 7.5),
    ("XINFD_DAEMON_NAME", "gpu-node-07", "gpu-node-07"),
    ("XINFD_INFERENCE_POOL_METRICS", "1", True),
    ("XINFD_IMAGE_URL_LIFETIME", "120", 120.0),
    ("XINFD_STREAM_WRITE_TIMEOUT", "2.5", 2.5),
    ("XINFD_LOG_MAX_BYTES", "65536", 65536),
    ("XINFD_LOG_BACKUPS", "5", 5),
    ("XINFERENCE_BATCH_SIZE", "64", 64),
    ("XINFERENCE_BATCH_INTERVAL", "0", 0.0),
    ("XINFERENCE_ALLOW_MULTI_REPLICA_PER_GPU", "off", False),
    ("XINFERENCE_LAUNCH_STRATEGY", "pack_first_launch_strategy", "PACK_FIRST_LAUNCH_STRATEGY"),
    ("XINFERENCE_ENABLE_VIRTUAL_ENV", "0", False),
    ("XINFERENCE_VIRTUAL_ENV_SKIP_INSTALLED", "FALSE", False),
    ("XINFD_VIRTUAL_ENV_BUILD_TIMEOUT", "90", 90.0),
    ("XINFD_WHEEL_CACHE", "/var/cache/xinfd/wheels", Path("/var/cache/xinfd/wheels")),
    ("XINFERENCE_CSG_TOKEN", "csg-secret", "csg-secret"),
    ("XINFERENCE_CSG_ENDPOINT", "https://hub.opencsg.com/", "https://hub.opencsg.com/"),
    ("XINFD_STOP_GRACE_PERIOD", "3", 3.0),
    ("XINFD_LAUNCH_TIMEOUT", "1200.5", 1200.5),
    ("XINFD_REPLICA_MAX_CONCURRENCY", "8", 8),
    ("XINFD_MODEL_QUEUE_SIZE", "0", 0),
    ("XINFD_CPU_THREADS_PER_REPLICA", "2", 2),
    ("XINFD_FORK_SERVER", "0", False),
    ("XINFD_PRELOAD_ENGINES", "transformers, sentence_transformers", ("transformers", "sentence_transformers")),
    ("XINFD_RESTART_BACKOFF", "0.1", 0.1),
    ("XINFD_RESTART_BUDGET", "0", 0),
    ("XINFD_LAUNCH", "qwen2.5-instruct:2, bge-m3", ("qwen2.5-instruct:2", "bge-m3")),
    (
        "XINFD_GPUS",
        "0:NVIDIA A100-SXM4-80GB:81920, 1:NVIDIA GeForce RTX 4090:24564",
        (
            GpuInfo(index=0, name="NVIDIA A100-SXM4-80GB", memory_mb=81920),
            GpuInfo(index=1, name="NVIDIA GeForce RTX 4090", memory_mb=24564),
        ),
    ),
    ("XINFD_MAX_CONNECTIONS", "300", 300),
    ("XINFD_MAX_CONNECTIONS_PER_PEER", "16", 16),
    ("XINFD_REQUEST_HEAD_TIMEOUT", "2.5", 2.5),
    ("XINFD_REQUEST_BODY_TIMEOUT", "30", 30.0),
    ("XINFD_KEEPALIVE_TIMEOUT", "5", 5.0),
    ("XINFD_ALLOWED_HOSTS", "xinfd.internal, *.Example.com., 10.0.0.5", ("xinfd.internal", "*.example.com",
                                                                        "10.0.0.5")),
    ("XINFD_CORS_ALLOWED_ORIGINS", "https://App.example.com, http://localhost:3000",
     ("https://app.example.com", "http://localhost:3000")),
    ("XINFD_ALLOW_DIRECT_REFERENCES", "1", True),
    ("XINFD_ALLOW_LOADER_ENV", "yes", True),
    ("XINFD_REPLICA_WAIT_TIMEOUT", "0", 0.0),
]


def test_env_cases_cover_every_variable() -> None:
    assert sorted(var for var, _, _ in ENV_CASES) == sorted(ENV_VARS)


@pytest.mark.parametrize(("var", "raw", "expected"), ENV_CASES, ids=[case[0] for case in ENV_CASES])
def test_env_var_is_parsed(home: Path, var: str, raw: str, expected: Any) -> None:
    settings = load_settings(env={"HOME": str(home), var: raw})
    assert getattr(settings, ENV_VARS[var]) == expected
    assert settings.sources[ENV_VARS[var]] == f"env {var}"


BAD_ENV_CASES: list[tuple[str, str]] = [
    ("XINFD_PORT", "http"),
    ("XINFD_PORT", "70000"),
    ("XINFD_HOST", "bad host"),
    ("XINFD_LOG_LEVEL", "verbose"),
    ("XINFERENCE_ENDPOINT", "127.0.0.1:9997"),
    ("XINFERENCE_ENDPOINT", "ftp://example.com"),
    ("XINFERENCE_ENDPOINT", "http://host:port"),
    ("XINFERENCE_MODEL_SRC", "github"),
    ("XINFERENCE_HEALTH_CHECK_FAILURE_THRESHOLD", "0"),
    ("XINFERENCE_HEALTH_CHECK_FAILURE_THRESHOLD", "2.5"),
    ("XINFERENCE_HEALTH_CHECK_INTERVAL", "abc"),
    ("XINFERENCE_HEALTH_CHECK_INTERVAL", "0"),
    ("XINFERENCE_HEALTH_CHECK_TIMEOUT", "-1"),
    ("XINFERENCE_HEALTH_CHECK_TIMEOUT", "nan"),
    ("XINFERENCE_DISABLE_HEALTH_CHECK", "2"),
    ("XINFERENCE_DISABLE_METRICS", "enabled"),
    ("XINFERENCE_DOWNLOAD_MAX_ATTEMPTS", "0"),
    ("XINFD_CPU_THREADS_PER_REPLICA", "-1"),
    ("XINFD_CPU_THREADS_PER_REPLICA", "auto"),
    ("XINFD_FORK_SERVER", "maybe"),
    ("XINFD_PRELOAD_ENGINES", "transformers,transformers"),
    ("XINFD_PRELOAD_ENGINES", "../engines"),
    ("XINFERENCE_TEXT_TO_IMAGE_BATCHING_SIZE", "1024x1024"),
    ("XINFERENCE_TEXT_TO_IMAGE_BATCHING_SIZE", "0*1024"),
    ("XINFERENCE_SSE_PING_ATTEMPTS_SECONDS", "inf"),
    ("XINFERENCE_MAX_TOKENS", "lots"),
    ("XINFERENCE_MAX_TOKENS", "0"),
    ("XINFD_DEFAULT_MAX_TOKENS", "0"),
    ("XINFERENCE_ALLOWED_IPS", "10.0.0.0/33"),
    ("XINFD_TRUSTED_PROXIES", "localhost"),
    ("XINFD_API_KEYS", "sk-one,,sk-two"),
    ("XINFD_CONTROL_ALLOWED_USERS", "no-such-user-xinfd"),
    ("XINFD_CONTROL_SOCKET_GROUP", "a b"),
    ("XINFD_LOG_MAX_BYTES", "10"),
    ("XINFD_STREAM_WRITE_TIMEOUT", "0"),
    ("XINFERENCE_BATCH_SIZE", "-4"),
    ("XINFERENCE_BATCH_INTERVAL", "-0.1"),
    ("XINFERENCE_ALLOW_MULTI_REPLICA_PER_GPU", "maybe"),
    ("XINFERENCE_LAUNCH_STRATEGY", "RANDOM"),
    ("XINFERENCE_ENABLE_VIRTUAL_ENV", "y"),
    ("XINFERENCE_VIRTUAL_ENV_SKIP_INSTALLED", "10"),
    ("XINFERENCE_CSG_ENDPOINT", "hub.opencsg.com"),
    ("XINFD_STOP_GRACE_PERIOD", "0"),
    ("XINFD_LAUNCH_TIMEOUT", "soon"),
    ("XINFD_LAUNCH", "qwen:0"),
    ("XINFD_LAUNCH", "../etc"),
    ("XINFD_LAUNCH", "a,a:2"),
    ("XINFD_GPUS", "0:A100"),
    ("XINFD_GPUS", "zero:A100:81920"),
    ("XINFD_GPUS", "0:A100:80GB"),
    ("XINFD_GPUS", "0:A100:81920,0:A100:81920"),
    ("XINFD_GPUS", "0::81920"),
    ("XINFD_GPUS", "0:A100:0"),
    ("XINFD_GPUS", '[{"index": 0, "name": "A100"}]'),
    ("XINFD_GPUS", "[{index: 0}]"),
    ("XINFD_MAX_CONNECTIONS", "0"),
    ("XINFD_REQUEST_HEAD_TIMEOUT", "0"),
    ("XINFD_ALLOWED_HOSTS", "evil.com/path"),
    ("XINFD_CORS_ALLOWED_ORIGINS", "https://app.example.com/path"),
    ("XINFD_CORS_ALLOWED_ORIGINS", "null"),
]


@pytest.mark.parametrize(("var", "raw"), BAD_ENV_CASES, ids=[f"{v}={r}" for v, r in BAD_ENV_CASES])
def test_bad_env_value_names_the_variable(home: Path, var: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"HOME": str(home), var: raw})
    message = str(info.value)
    assert message.startswith(f"{var}: ")
    assert "\n" not in message


def test_error_message_wording(home: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"HOME": str(home), "XINFERENCE_HEALTH_CHECK_INTERVAL": "abc"})
    assert str(info.value) == "XINFERENCE_HEALTH_CHECK_INTERVAL: expected a number of seconds, got 'abc'"
    with pytest.raises(ConfigError) as info:
        load_settings(env={"HOME": str(home), "XINFERENCE_ALLOWED_IPS": "10.0.0.0/33"})
    assert str(info.value) == "XINFERENCE_ALLOWED_IPS: '10.0.0.0/33' is not an IP address or CIDR block"


def test_ip_networks_ipv6_and_host_bits(home: Path) -> None:
    settings = load_settings(env={"HOME": str(home), "XINFERENCE_ALLOWED_IPS": "2001:db8::/32,10.1.2.3/8"})
    assert settings.allowed_ips == (ip_network("2001:db8::/32"), ip_network("10.0.0.0/8"))


def test_unknown_toml_key_warns_with_the_closest_key(write_toml: Callable[[str], Path]) -> None:
    path = write_toml("helth_check_interval = 3\n")
    settings = load_settings(config_path=path, env={})
    assert settings.warnings == (
        f"{path}: key 'helth_check_interval' is not an xinfd setting, ignored; did you mean health_check_interval?",
    )
    assert settings.health_check_interval == 5.0


def test_unknown_toml_key_is_an_error_when_strict(write_toml: Callable[[str], Path]) -> None:
    path = write_toml("helth_check_interval = 3\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config_path=path, env={}, strict=True)
    assert str(info.value) == (
        f"{path}: key 'helth_check_interval' is not an xinfd setting; did you mean health_check_interval? (--strict)"
    )


def test_a_table_in_place_of_keys_warns(write_toml: Callable[[str], Path]) -> None:
    path = write_toml("[server]\nport = 1\n")
    settings = load_settings(config_path=path, env={})
    assert settings.port == 9997
    assert settings.warnings == (f"{path}: key 'server' is not an xinfd setting, ignored",)


@pytest.mark.parametrize(
    ("var", "closest"),
    [
        ("XINFERENCE_ALLOWED_IP", "XINFERENCE_ALLOWED_IPS"),
        ("XINFD_ALLOWED_IPS", "XINFERENCE_ALLOWED_IPS"),  # the right name in the wrong namespace
        ("XINFERENCE_BATCHSIZE", "XINFERENCE_BATCH_SIZE"),
        ("XINFD_COLOUR_SCHEME", None),
    ],
)
def test_unknown_variables_warn_with_the_closest_variable(var: str, closest: str | None) -> None:
    settings = load_settings(env={var: "10.0.0.0/8"})
    (warning,) = settings.warnings
    assert warning.startswith(f"environment variable {var} is not an xinfd setting, ignored")
    if closest is None:
        assert "did you mean" not in warning
    else:
        assert f"did you mean {closest}?" in warning


def test_a_misspelled_access_setting_says_access_is_not_restricted() -> None:
    settings = load_settings(env={"XINFERENCE_ALLOWED_IP": "10.0.0.0/8"})
    assert settings.allowed_ips == ()
    assert "allowed_ips is NOT set by it" in settings.warnings[0]


def test_unknown_variables_are_errors_when_strict() -> None:
    with pytest.raises(ConfigError, match="XINFERENCE_ALLOWED_IP is not an xinfd setting; did you mean"):
        load_settings(env={"XINFERENCE_ALLOWED_IP": "10.0.0.0/8"}, strict=True)


def test_variables_read_on_purpose_and_other_namespaces_are_not_reported() -> None:
    env = {"XINFD_CONFIG": "", "XINFD_PLUGINS": "", "XINFD_API_KEY": "k", "PATH": "/bin", "XINFERENCEX": "1"}
    assert load_settings(env=env).warnings == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('port = "x"\n', "port: expected an integer, got str 'x'"),
        ("port = 5.0\n", "port: expected an integer"),
        ("disable_metrics = 1\n", "disable_metrics: expected a boolean"),
        ('health_check_interval = "5"\n', "health_check_interval: expected a number of seconds"),
        ('allowed_ips = "10.0.0.0/8"\n', "allowed_ips: expected a list of strings"),
        ("launch = [1]\n", "launch: expected a list of strings"),
        ('csg_token = ""\n', "csg_token: must not be empty"),
        ("health_check_interval = nan\n", "health_check_interval: must be a number of seconds > 0"),
    ],
)
def test_toml_type_errors_name_file_and_key(
    write_toml: Callable[[str], Path], text: str, expected: str
) -> None:
    path = write_toml(text)
    with pytest.raises(ConfigError) as info:
        load_settings(config_path=path, env={})
    assert str(info.value).startswith(f"{path}: {expected}")


def test_invalid_toml_names_file_and_line(write_toml: Callable[[str], Path]) -> None:
    path = write_toml("port = 1\nhost = = 'x'\n")
    with pytest.raises(ConfigError, match=r"line 2") as info:
        load_settings(config_path=path, env={})
    assert str(info.value).startswith(f"{path}: invalid TOML")


def test_missing_explicit_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(config_path=tmp_path / "nope.toml", env={})
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(env={"XINFD_CONFIG": str(tmp_path / "nope.toml")})


def test_config_file_from_env_and_default_location(
    monkeypatch: pytest.MonkeyPatch, write_toml: Callable[[str], Path]
) -> None:
    path = write_toml("batch_size = 5\n")
    assert load_settings(env={"XINFD_CONFIG": str(path)}).batch_size == 5
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", path)
    assert load_settings(env={}).batch_size == 5


GPUS = """
[[gpus]]
index = 0
name = "A100"
memory_mb = 81920

[[gpus]]
index = 1
name = "A100"
memory_mb = 81920
"""


def test_gpus_tables(write_toml: Callable[[str], Path]) -> None:
    settings = load_settings(config_path=write_toml(GPUS), env={})
    assert settings.gpus == (
        GpuInfo(index=0, name="A100", memory_mb=81920),
        GpuInfo(index=1, name="A100", memory_mb=81920),
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GPUS.replace("index = 1", "index = 0"), "gpus[1].index: duplicate GPU index 0"),
        (GPUS.replace("index = 1", "index = -1"), "gpus[1].index: must be an integer >= 0"),
        (GPUS.replace("memory_mb = 81920", "memory_mb = 0", 1), "gpus[0].memory_mb: must be an integer > 0"),
        (GPUS.replace('name = "A100"', 'name = ""', 1), "gpus[0].name: must be a non-empty string"),
        (GPUS.replace("memory_mb", "memory", 1), "gpus[0]: unknown key 'memory' (did you mean 'memory_mb'?)"),
        ("gpus = 2\n", "gpus: expected [[gpus]] tables"),
    ],
)
def test_gpus_validation(write_toml: Callable[[str], Path], text: str, expected: str) -> None:
    path = write_toml(text)
    with pytest.raises(ConfigError) as info:
        load_settings(config_path=path, env={})
    assert str(info.value).startswith(f"{path}: {expected}")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("0:A100", "XINFD_GPUS: device 0 '0:A100': expected INDEX:NAME:MEMORY_MB (all devices: "
         "INDEX:NAME:MEMORY_MB[,INDEX:NAME:MEMORY_MB...])"),
        ("0:A:1,x:A:1", "XINFD_GPUS: device 1 'x:A:1': index must be an integer >= 0, got 'x'"),
        ("0:A100:80GB", "XINFD_GPUS: device 0 '0:A100:80GB': memory_mb must be an integer > 0 (MiB), got '80GB'"),
        ("0:A:1,0:B:2", "XINFD_GPUS: [1].index: duplicate GPU index 0"),
        ("0:A100:0", "XINFD_GPUS: [0].memory_mb: must be an integer > 0, got 0"),
        ('[{"index": 0, "name": "A"}]', "XINFD_GPUS: [0]: missing key 'memory_mb'"),
        ('[{"index": 0, "name": "A", "memory": 1}]',
         "XINFD_GPUS: [0]: unknown key 'memory' (did you mean 'memory_mb'?)"),
        ('{"index": 0}', "XINFD_GPUS: expected [[gpus]] tables, got dict"),
        ("[0:A:1]", "XINFD_GPUS: invalid JSON: Expecting ',' delimiter at character 2"),
    ],
)
def test_gpus_variable_errors_are_one_line_naming_the_device(home: Path, raw: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"HOME": str(home), "XINFD_GPUS": raw})
    assert str(info.value) == expected


def test_gpus_variable_replaces_the_tables_and_takes_json(home: Path, write_toml: Callable[[str], Path]) -> None:
    path = write_toml(GPUS)
    settings = load_settings(config_path=path, env={"HOME": str(home), "XINFD_GPUS": "3:Name: with colons:1024"})
    assert settings.gpus == (GpuInfo(index=3, name="Name: with colons", memory_mb=1024),)
    assert settings.sources["gpus"] == "env XINFD_GPUS"
    assert load_settings(config_path=path, env={"HOME": str(home)}).sources["gpus"] == f"file {path}"
    as_json = '[{"index": 0, "name": "A, B", "memory_mb": 8}]'
    assert load_settings(env={"HOME": str(home), "XINFD_GPUS": as_json}).gpus == (
        GpuInfo(index=0, name="A, B", memory_mb=8),
    )
    assert load_settings(env={"HOME": str(home), "XINFD_GPUS": " "}).gpus == ()  # empty: unset


def test_describe_round_trips(tmp_path: Path, write_toml: Callable[[str], Path]) -> None:
    path = write_toml(GPUS + "")
    original = load_settings(
        config_path=path,
        env={
            "XINFERENCE_HOME": str(tmp_path / 'we"ird\\home'),
            "XINFERENCE_ALLOWED_IPS": "10.0.0.0/8,2001:db8::/32",
            "XINFD_API_KEYS": "sk-1,sk-2",
            "XINFERENCE_CSG_TOKEN": "csg-secret",
            "XINFERENCE_MAX_TOKENS": "512",
            "XINFERENCE_BATCH_INTERVAL": "0.00001",
            "XINFD_LAUNCH": "a,b:3",
        },
        cli={"port": 8000, "log_level": "debug"},
    )
    text = describe(original)
    data = tomllib.loads(text)
    assert data["port"] == 8000
    assert len(data["gpus"]) == 2
    reloaded = load_settings(config_path=write_toml(text), env={})
    assert values(reloaded, without=("api_keys", "csg_token")) == values(
        original, without=("api_keys", "csg_token")
    )
    assert "# from: flag --port" in text
    assert "# from: env XINFERENCE_MAX_TOKENS" in text
    assert f"# from: file {path}" in text
    assert "# from: default" in text


def test_describe_of_defaults_round_trips(home: Path, write_toml: Callable[[str], Path]) -> None:
    original = load_settings(env={"HOME": str(home)})
    text = describe(original)
    reloaded = load_settings(config_path=write_toml(text), env={})
    assert values(reloaded) == values(original)


def test_describe_masks_secrets(home: Path) -> None:
    settings = load_settings(
        env={"HOME": str(home), "XINFD_API_KEYS": "sk-one,sk-two", "XINFERENCE_CSG_TOKEN": "csg-secret"}
    )
    text = describe(settings)
    assert "sk-one" not in text
    assert "sk-two" not in text
    assert "csg-secret" not in text
    data = tomllib.loads(text)
    assert data["api_keys"] == ["***", "***"]
    assert data["csg_token"] == "***"


@pytest.mark.parametrize(
    ("item", "expected"),
    [("qwen", ("qwen", 1)), ("qwen:3", ("qwen", 3)), (" bge-m3:01 ", ("bge-m3", 1)),
     ("qwen2.5-instruct:2", ("qwen2.5-instruct", 2))],
)
def test_parse_launch_item(item: str, expected: tuple[str, int]) -> None:
    assert parse_launch_item(item) == expected


# "a:b:2": the name would be "a:b", which no family can have (names are checked by xinfd.names).
@pytest.mark.parametrize(
    "item", ["", ":2", "qwen:0", "qwen:-1", "qwen:x", "a/b", "..", "a..b", "my model", "a:b:2", "qwen\u0435"]
)
def test_parse_launch_item_rejects(item: str) -> None:
    with pytest.raises(ConfigError, match=r"^launch: "):
        parse_launch_item(item)


def test_settings_are_frozen(home: Path) -> None:
    settings = load_settings(env={"HOME": str(home)})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        settings.sources["port"] = "x"  # type: ignore[index]
