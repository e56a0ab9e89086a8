"""A launch request: what to launch and how, validated at the edge (control API, start-up list, state.json).

Every field is checked here, so the rest of the daemon handles only valid requests; each problem is an
``InvalidRequestError`` naming its field (HTTP 400, ``xinfctl`` exit code 2).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from xinfd.cpus import env_thread_count
from xinfd.errors import InvalidRequestError
from xinfd.gpus import NGpu
from xinfd.names import ENV_NAME, MODEL_NAME, MODEL_UID, check_name
from xinfd.supervisor.variant import Variant, parse_size
from xinfd.venvs.python import check_python_request
from xinfd.venvs.spec import check_requested_packages

# Variables the daemon owns for each replica; a user --env must not silently undo the slot table.
_RESERVED_ENV = frozenset({"CUDA_VISIBLE_DEVICES", "XINFD_WORKER_CONTEXT"})
MAX_REPLICAS = 256
MAX_CPU_THREADS = 4096

# Variables that make the dynamic loader, the interpreter or a shell load code from a place the launcher
# chooses (PYTHONPATH, LD_PRELOAD, ...; HOME moves Python's user site-packages): refused unless the operator
# sets allow_loader_env. Every other PYTHON* variable is refused too, except these harmless ones.
_LOADER_ENV = frozenset({"PATH", "HOME", "BASH_ENV", "ENV", "GCONV_PATH", "NODE_OPTIONS", "PERL5OPT", "PERL5LIB",
                         "RUBYOPT", "RUBYLIB"})
_LOADER_PREFIXES = ("LD_", "DYLD_", "PYTHON")
_HARMLESS_PYTHON_ENV = frozenset({"PYTHONUNBUFFERED", "PYTHONHASHSEED", "PYTHONIOENCODING", "PYTHONUTF8",
                                  "PYTHONFAULTHANDLER", "PYTHONDONTWRITEBYTECODE", "PYTHONDEVMODE",
                                  "PYTHONTRACEMALLOC", "PYTHONOPTIMIZE"})


def is_loader_variable(name: str) -> bool:
    """Whether setting ``name`` in a replica's environment can make it run code from elsewhere."""
    if name in _LOADER_ENV:
        return True
    return name.startswith(_LOADER_PREFIXES) and name not in _HARMLESS_PYTHON_ENV


@dataclass(frozen=True, slots=True, kw_only=True)
class LaunchPolicy:
    """What the operator allows in launch requests beyond the defaults (settings, off by default)."""

    # -vp entries that are direct references or paths (setting allow_direct_references).
    allow_direct_references: bool = False
    # --env variables of the loader and interpreter (setting allow_loader_env).
    allow_loader_env: bool = False

    @classmethod
    def from_settings(cls, settings: Any) -> LaunchPolicy:
        return cls(
            allow_direct_references=settings.allow_direct_references, allow_loader_env=settings.allow_loader_env
        )


STRICT = LaunchPolicy()


@dataclass(frozen=True, slots=True, kw_only=True)
class LaunchRequest:
    """A validated launch request (from the control API or the start-up ``--launch`` list)."""

    model_name: str
    model_engine: str | None = None
    replica: int = 1
    model_uid: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    # None: follow XINFERENCE_ENABLE_VIRTUAL_ENV; True/False: --enable-virtual-env / --disable-virtual-env.
    enable_virtual_env: bool | None = None
    # --virtual-env-package/-vp: added to the model's venv packages, replacing an entry of the same name.
    virtual_env_packages: tuple[str, ...] = ()
    # --python: the model venv's interpreter (a version like 3.12 or an absolute path); None: the daemon's.
    python: str | None = None
    # GPUs per replica ("auto": one each when the host has GPUs, else none) and explicit placement.
    n_gpu: NGpu = "auto"
    gpu_idx: tuple[int, ...] | None = None
    # Which of the family's weights (Xinference's launch fields); checked against the family by the plan
    # (``xinfd.supervisor.variant``): a value the launch would not load is refused, never ignored.
    model_format: str | None = None
    model_size_in_billions: float | None = None
    quantization: str | None = None
    # --cpu-threads: threads of each CPU replica instead of the daemon's split of the cores (``xinfd.cpus``).
    cpu_threads: int | None = None

    @property
    def thread_count(self) -> int | None:
        """The launch's own thread count for its CPU replicas: ``cpu_threads``, else ``--env OMP_NUM_THREADS``."""
        return self.cpu_threads if self.cpu_threads is not None else env_thread_count(self.env)

    @property
    def variant(self) -> Variant:
        return Variant(model_format=self.model_format, model_size_in_billions=self.model_size_in_billions,
                       quantization=self.quantization)

    @classmethod
    def from_json(cls, body: Any, policy: LaunchPolicy = STRICT) -> LaunchRequest:
        """Validate a JSON body; every problem is an ``InvalidRequestError`` naming the field.

        ``policy`` says what the operator allows beyond the defaults (the control API and the restore pass the
        daemon's settings; without one, the strict defaults apply).
        """
        if not isinstance(body, dict):
            raise InvalidRequestError("launch request must be a JSON object")
        unknown = set(body) - {"model_name", "model_engine", "replica", "model_uid", "env", "options",
                               "enable_virtual_env", "virtual_env_packages", "n_gpu", "gpu_idx", "python",
                               "model_format", "model_size_in_billions", "quantization", "cpu_threads"}
        if unknown:
            raise InvalidRequestError(f"unknown field(s): {', '.join(sorted(unknown))}", param=min(unknown))
        name = check_name(body.get("model_name"), MODEL_NAME, param="model_name")
        engine = body.get("model_engine")
        if engine is not None:  # an engine name goes into venv paths and log lines: the same rule as names
            # spec: engine names are lowercase internally (-e ECHO, vLLM)
            engine = check_name(engine, MODEL_NAME, param="model_engine").lower()
        replica = body.get("replica", 1)
        if isinstance(replica, bool) or not isinstance(replica, int) or not 1 <= replica <= MAX_REPLICAS:
            raise InvalidRequestError(f"replica must be an integer 1..{MAX_REPLICAS}, got {replica!r}",
                                      param="replica")
        uid = body.get("model_uid")
        if uid is not None:
            uid = check_name(uid, MODEL_UID, param="model_uid")  # it names files and response headers
        env = {} if body.get("env") is None else body["env"]
        if not isinstance(env, dict):
            raise InvalidRequestError("env must be an object of NAME: value", param="env")
        for key, value in env.items():
            check_name(key, ENV_NAME, param="env")
            if not isinstance(value, str) or "\0" in value:
                raise InvalidRequestError(f"invalid environment variable {key!r}={value!r}", param="env")
            if key in _RESERVED_ENV:
                raise InvalidRequestError(f"{key} is set by xinfd for each replica; it cannot be overridden",
                                          param="env")
            if is_loader_variable(key) and not policy.allow_loader_env:
                raise InvalidRequestError(
                    f"--env {key} can make the replica load code from elsewhere; refused unless the operator "
                    "sets allow_loader_env (XINFD_ALLOW_LOADER_ENV=1)", param="env")
        options = {} if body.get("options") is None else body["options"]
        if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
            raise InvalidRequestError("options must be an object", param="options")
        enable_venv = body.get("enable_virtual_env")
        if enable_venv is not None and not isinstance(enable_venv, bool):
            raise InvalidRequestError("enable_virtual_env must be true, false or null",
                                      param="enable_virtual_env")
        packages = body.get("virtual_env_packages") or []
        if not isinstance(packages, list) or not all(isinstance(p, str) and p.strip() for p in packages):
            raise InvalidRequestError("virtual_env_packages must be a list of requirement strings",
                                      param="virtual_env_packages")
        # PEP 508 or a documented placeholder, never an installer option; a direct reference only if allowed.
        check_requested_packages(packages, allow_direct_references=policy.allow_direct_references)
        python = None if body.get("python") is None else check_python_request(body["python"])
        n_gpu = body.get("n_gpu", "auto")
        if n_gpu != "auto" and (isinstance(n_gpu, bool) or not isinstance(n_gpu, int) or n_gpu < 0):
            raise InvalidRequestError(f"n_gpu must be 'auto' or an integer >= 0, got {n_gpu!r}",
                                      param="n_gpu")
        gpu_idx = body.get("gpu_idx")
        if gpu_idx is not None and (
            not isinstance(gpu_idx, list) or not gpu_idx
            or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in gpu_idx)
        ):
            raise InvalidRequestError(f"gpu_idx must be a non-empty list of GPU indices, got {gpu_idx!r}",
                                      param="gpu_idx")
        cpu_threads = body.get("cpu_threads")
        if cpu_threads is not None and (
            isinstance(cpu_threads, bool) or not isinstance(cpu_threads, int)
            or not 1 <= cpu_threads <= MAX_CPU_THREADS
        ):
            raise InvalidRequestError(f"cpu_threads must be an integer 1..{MAX_CPU_THREADS} or null, "
                                      f"got {cpu_threads!r}", param="cpu_threads")
        for text_field in ("model_format", "quantization"):
            value = body.get(text_field)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise InvalidRequestError(f"{text_field} must be a non-empty string, got {value!r}",
                                          param=text_field)
        return cls(model_name=name, model_engine=engine, replica=replica, model_uid=uid, env=env,
                   options=options, enable_virtual_env=enable_venv, virtual_env_packages=tuple(packages),
                   python=python, n_gpu=n_gpu,
                   gpu_idx=tuple(gpu_idx) if gpu_idx is not None else None,
                   model_format=body.get("model_format"),
                   model_size_in_billions=parse_size(body.get("model_size_in_billions")),
                   quantization=body.get("quantization"), cpu_threads=cpu_threads)

    def to_json(self) -> dict[str, Any]:
        """The body ``from_json`` accepts back: what the desired state file stores."""
        body: dict[str, Any] = {
            "model_name": self.model_name, "model_engine": self.model_engine, "replica": self.replica,
            "model_uid": self.model_uid, "env": dict(self.env), "options": dict(self.options),
            "enable_virtual_env": self.enable_virtual_env,
            "virtual_env_packages": list(self.virtual_env_packages), "n_gpu": self.n_gpu,
        }
        if self.gpu_idx is not None:
            body["gpu_idx"] = list(self.gpu_idx)
        if self.python is not None:
            body["python"] = self.python
        if self.cpu_threads is not None:
            body["cpu_threads"] = self.cpu_threads
        for key, value in self.variant.to_json().items():
            if value is not None:
                body[key] = value
        return body
