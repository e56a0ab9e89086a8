"""From a model's ``virtualenv`` block to the exact package list of its venv (spec "Model Virtual
Environments": engine placeholders, markers, ``#system_x#``, ``--virtual-env-package`` overrides).

Everything here is pure: the plugins' dependency hook and the daemon's installed versions are passed in as
functions, so every rule is unit-tested without uv. The result, ``VenvSpec``, is frozen and hashed; the hash
names the venv directory, so a changed spec can never mutate a venv that a replica runs from.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from xinfd.errors import InvalidRequestError, XinfdError
from xinfd.names import DIRECTORY_NAME, is_valid_name

if TYPE_CHECKING:
    from packaging.markers import Marker

# packaging is imported in the functions that parse requirements and markers: the daemon imports this module
# at start, and parses a package entry only at a launch (idle memory, tests/unit/test_daemon_imports.py).

# Bumped when the venv layout or build recipe changes, so old venvs are not reused by a new recipe.
LAYOUT_VERSION = 1
_PLACEHOLDER_RE = re.compile(r"^#([a-z0-9_]+)_dependencies#$")
_SYSTEM_RE = re.compile(r"^#system_([A-Za-z0-9][A-Za-z0-9._-]*)#$")
_ENGINE_TOKEN_RE = re.compile(r"#(?:model_)?engine#")
# PEP 508 has no "literal == literal" comparison, so #engine# becomes a marker *variable* whose value we set.
# platform_release is the variable a model spec is least likely to test; a marker using both is refused.
_ENGINE_VARIABLE = "platform_release"
BLOCK_KEYS = frozenset({"packages", "inherit_pip_config", "index_url", "extra_index_url", "find_links",
                        "trusted_host", "index_strategy", "no_build_isolation"})
# The spec's placeholders for engines this daemon may not have (a model JSON written for Xinference lists
# them for every engine it supports). Used only when no registered engine answers the placeholder: an
# installed engine's own ``dependencies()`` always wins. The builtin engines (vllm, sglang, llama.cpp, mlx,
# transformers, sentence_transformers) answer their own; tests/unit/venvs/test_venv_spec.py checks that.
FALLBACK_DEPENDENCIES: dict[str, tuple[str, ...]] = {
    "diffusers": ("diffusers>=0.32", "transformers>=4.41", "accelerate>=0.26", "torch>=2.4", "pillow>=10"),
}
INDEX_STRATEGIES = frozenset({"first-index", "unsafe-first-match", "unsafe-best-match"})


class VenvSpecError(InvalidRequestError):
    """A package list or virtualenv block is invalid (the message names the entry)."""

    code = "invalid_venv_spec"


class VenvError(XinfdError):
    """Building or using a model venv failed; the message is the one-line reason."""

    code = "venv_failed"
    status = 500


class VenvInUseError(XinfdError):
    """A venv that a running replica uses cannot be removed."""

    code = "venv_in_use"
    status = 409
    error_type = "invalid_request_error"


@dataclass(frozen=True, slots=True, kw_only=True)
class IndexOptions:
    """Index and build options passed to uv (from the virtualenv block, plus pip's config if inherited)."""

    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    trusted_hosts: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()
    index_strategy: str | None = None
    no_build_isolation: bool = False

    def uv_args(self) -> list[str]:
        """The options as uv argv items (never through a shell)."""
        args: list[str] = []
        if self.index_url:
            args += ["--index-url", self.index_url]
        for url in self.extra_index_urls:
            args += ["--extra-index-url", url]
        for link in self.find_links:
            args += ["--find-links", link]
        for host in self.trusted_hosts:
            args += ["--allow-insecure-host", host]
        if self.index_strategy:
            args += ["--index-strategy", self.index_strategy]
        if self.no_build_isolation:
            args.append("--no-build-isolation")
        return args

    def pip_args(self) -> list[str]:
        """The same options for ``pip wheel`` (source builds, ``xinfd.venvs.wheels``): pip's spelling."""
        args = self.uv_args()
        renamed = {"--allow-insecure-host": "--trusted-host"}
        args = [renamed.get(a, a) for a in args]
        if self.index_strategy:  # a uv-only choice; pip always merges its indexes
            at = args.index("--index-strategy")
            del args[at:at + 2]
        for constraint in self.constraints:
            args += ["--constraint", constraint]
        return args

    def merged(self, inherited: IndexOptions) -> IndexOptions:
        """The block's options win; lists hold the block's first, then pip's (``inherit_pip_config``)."""
        return IndexOptions(
            index_url=self.index_url or inherited.index_url,
            extra_index_urls=_unique(self.extra_index_urls + inherited.extra_index_urls),
            find_links=_unique(self.find_links + inherited.find_links),
            trusted_hosts=_unique(self.trusted_hosts + inherited.trusted_hosts),
            constraints=_unique(self.constraints + inherited.constraints),
            index_strategy=self.index_strategy or inherited.index_strategy,
            no_build_isolation=self.no_build_isolation or inherited.no_build_isolation,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class VenvSpec:
    """Everything that decides a venv's content. ``digest`` names its directory: equal specs share a venv."""

    model_name: str
    engine: str
    python_version: str
    python: str
    requirements: tuple[str, ...]
    index: IndexOptions = field(default_factory=IndexOptions)
    inherit_pip_config: bool = True
    skip_installed: bool = True
    # ``name==version`` of the daemon's distributions copied in (xinfd, the engine's plugin): set only for an
    # interpreter other than the daemon's, which cannot share its site-packages (``xinfd.venvs.bundle``).
    bundled: tuple[str, ...] = ()
    # Distributions the engine wants built from source, with the environment of that build
    # (``Engine.build_env``): part of the digest, so a changed build flag means another venv.
    source_builds: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()

    @property
    def own_copies(self) -> bool:
        """True when the venv holds its own xinfd instead of seeing the daemon's environment."""
        return bool(self.bundled)

    def digest(self) -> str:
        data = asdict(self)
        data["layout"] = LAYOUT_VERSION
        if not self.bundled:
            del data["bundled"]  # venvs on the daemon's interpreter keep the digest they had before the field
        if not self.source_builds:
            del data["source_builds"]  # likewise for engines that build nothing from source
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _unique(items: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def check_name(value: str, what: str) -> str:
    """Model and engine names become directory names: no separators, no ``..``, nothing hidden."""
    if not is_valid_name(value, DIRECTORY_NAME):
        raise VenvSpecError(f"{what} {value!r} cannot name a venv directory: expected {DIRECTORY_NAME.rule}")
    return value


def check_package(entry: str, *, param: str | None = None) -> str:
    """A package entry is a PEP 508 requirement or a documented placeholder, never an option or a path.

    ``param`` is the request field the entry came from (``virtual_env_packages``), for the error's ``param``;
    None for a model family's own ``virtualenv.packages`` (no request field to name)."""
    text = entry.strip()
    if not text:
        raise VenvSpecError("empty virtualenv package entry", param=param)
    if text.startswith("-") or "\n" in text or "\0" in text:
        raise VenvSpecError(f"virtualenv package {entry!r} looks like an installer option, not a requirement",
                             param=param)
    head, _, marker = text.partition(";")
    head = head.strip()
    if _PLACEHOLDER_RE.match(head) or _SYSTEM_RE.match(head):
        if marker.strip():
            _marker_text(marker, "probe", param=param)  # syntax check now, evaluation later
        return text
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        Requirement(_ENGINE_TOKEN_RE.sub(_ENGINE_VARIABLE, text))
    except InvalidRequirement as exc:
        raise VenvSpecError(f"virtualenv package {entry!r} is not a valid requirement: {exc}",
                             param=param) from None
    return text


_ARCHIVE_SUFFIXES = (".whl", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip")
# Virtualenv block keys that choose where packages come from (an index or a folder of wheels of one's own).
SOURCE_KEYS = frozenset({"index_url", "extra_index_url", "find_links", "trusted_host"})


def direct_reference(entry: str) -> str | None:
    """Why ``entry`` installs from a URL or a path instead of the package index, or None if it does not.

    A PEP 508 direct reference (``name @ file:///...``, ``name @ https://...``, ``name @ git+...``) and what uv
    reads as a path (``./pkg``, ``/x/y``, ``pkg.whl``, ``pkg.tar.gz``) install code that whoever chose the
    location controls; the daemon runs it as its own user while building the venv.
    """
    head = entry.strip().partition(";")[0].strip()
    if head.startswith("-") or _PLACEHOLDER_RE.match(head) or _SYSTEM_RE.match(head):
        return None  # an installer option is refused by check_package whatever the settings say
    if "@" in head or "://" in head:
        return "a direct reference (name @ URL)"
    lowered = head.lower()
    if head.startswith((".", "~")) or "/" in head or "\\" in head or lowered.endswith(_ARCHIVE_SUFFIXES):
        return "a path"
    return None


def check_requested_packages(packages: Sequence[str], *, allow_direct_references: bool,
                             param: str = "virtual_env_packages") -> None:
    """The rules for packages a *request* adds (a launch's or ``venv create``'s ``-vp``), naming ``param``:
    each is a requirement or a placeholder (``check_package``), and a direct reference or a path is refused
    unless the operator allows them (setting ``allow_direct_references``): installing one runs code from a
    place the caller chose, as the daemon's user."""
    for package in packages:
        what = direct_reference(package)
        if what is not None and not allow_direct_references:
            raise VenvSpecError(
                f"{param} entry {package!r} is {what}: installing it runs code from a place the launch chose; "
                "refused unless the operator sets allow_direct_references (XINFD_ALLOW_DIRECT_REFERENCES=1)",
                param=param)
        check_package(package, param=param)


def _marker_text(marker: str, engine: str, *, param: str | None = None) -> Marker:
    text = marker.strip()
    if _ENGINE_TOKEN_RE.search(text) and _ENGINE_VARIABLE in text:
        raise VenvSpecError(f"marker {text!r} uses #engine# and {_ENGINE_VARIABLE} together; not supported",
                            param=param)
    from packaging.markers import InvalidMarker, Marker

    try:
        return Marker(_ENGINE_TOKEN_RE.sub(_ENGINE_VARIABLE, text))
    except InvalidMarker as exc:
        raise VenvSpecError(f"invalid marker {text!r}: {exc}", param=param) from None


def _applies(marker: str, engine: str, environment: Mapping[str, str], *, param: str | None = None) -> bool:
    """Evaluate a PEP 508 marker where ``#engine#``/``#model_engine#`` stand for ``engine`` (exact case)."""
    if not marker.strip():
        return True
    parsed = _marker_text(marker, engine, param=param)
    from packaging.markers import UndefinedComparison, UndefinedEnvironmentName

    try:
        return bool(parsed.evaluate({**environment, _ENGINE_VARIABLE: engine}))
    except (UndefinedComparison, UndefinedEnvironmentName) as exc:
        raise VenvSpecError(f"cannot evaluate marker {marker.strip()!r}: {exc}", param=param) from None


def placeholder_engine(name: str, engines: Sequence[str]) -> str | None:
    """The engine whose placeholder is ``#<name>_dependencies#`` ('.' and '-' in engine names become '_')."""
    for engine in engines:
        if re.sub(r"[.-]", "_", engine) == name:
            return engine
    return None


def expand_packages(
    packages: Sequence[str],
    *,
    engine: str,
    engines: Sequence[str],
    dependencies: Callable[[str], Sequence[str]],
    system_version: Callable[[str], str | None],
    environment: Mapping[str, str],
    overrides: Sequence[str] = (),
    overrides_param: str | None = None,
) -> tuple[str, ...]:
    """The final requirement list: placeholders expanded, markers applied, ``-vp`` overrides merged in.

    A bad override is a ``VenvSpecError`` whose ``param`` is ``overrides_param``: the request field the
    overrides came from (``virtual_env_packages``), so the 400 names what the caller must fix.

    An override replaces every default entry of the same normalised name (``#system_<name>#`` included) at the
    first one's position; otherwise it is appended (spec: "your version replaces the default instead of being
    appended").
    """
    defaults = _expand(packages, engine, engines, dependencies, system_version, environment, depth=0)
    extra = _expand([check_package(p, param=overrides_param) for p in overrides], engine, engines,
                    dependencies, system_version, environment, depth=0, param=overrides_param)
    result: list[tuple[str, str]] = list(defaults)
    for name, requirement in extra:
        positions = [i for i, (n, _) in enumerate(result) if n == name]
        if positions:
            result[positions[0]] = (name, requirement)
            result = [item for i, item in enumerate(result) if i not in positions[1:]]
        else:
            result.append((name, requirement))
    return tuple(req for _, req in result)


def _expand(
    packages: Sequence[str],
    engine: str,
    engines: Sequence[str],
    dependencies: Callable[[str], Sequence[str]],
    system_version: Callable[[str], str | None],
    environment: Mapping[str, str],
    *,
    depth: int,
    param: str | None = None,
) -> list[tuple[str, str]]:
    if depth > 3:
        raise VenvSpecError("engine dependency placeholders nest too deeply (one expands to itself?)", param=param)
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    out: list[tuple[str, str]] = []
    for entry in packages:
        text = check_package(entry, param=param)
        head, _, marker = text.partition(";")
        head = head.strip()
        if not _applies(marker, engine, environment, param=param):
            continue
        if match := _PLACEHOLDER_RE.match(head):
            owner = placeholder_engine(match.group(1), engines)
            if owner is not None:
                expanded = list(dependencies(owner))
            elif match.group(1) in FALLBACK_DEPENDENCIES:
                expanded = list(FALLBACK_DEPENDENCIES[match.group(1)])
            else:
                raise VenvSpecError(f"unknown placeholder {head} (no installed engine provides it; known "
                                    f"without one: {', '.join(f'#{n}_dependencies#' for n in FALLBACK_DEPENDENCIES)})",
                                    param=param)
            out += _expand(expanded, engine, engines, dependencies, system_version, environment, depth=depth + 1,
                           param=param)
        elif match := _SYSTEM_RE.match(head):
            name = match.group(1)
            version = system_version(name)
            if version is None:
                raise VenvSpecError(f"{head}: package {name!r} is not installed in xinfd's environment",
                                    param=param)
            out.append((str(canonicalize_name(name)), f"{name}=={version}"))
        else:
            requirement = Requirement(_ENGINE_TOKEN_RE.sub(_ENGINE_VARIABLE, text))
            requirement.marker = None  # already evaluated above, against this engine and this interpreter
            out.append((str(canonicalize_name(requirement.name)), str(requirement)))
    return out


def index_options(block: Mapping[str, Any]) -> IndexOptions:
    """The block's own index options, validated (each URL or host is one argv item for uv, never a shell)."""
    unknown = set(block) - BLOCK_KEYS
    if unknown:
        raise VenvSpecError(f"unknown virtualenv field(s): {', '.join(sorted(unknown))}")

    def strings(key: str) -> tuple[str, ...]:
        value = block.get(key)
        if value is None:
            return ()
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) and i.strip() for i in items):
            raise VenvSpecError(f"virtualenv.{key} must be a string or a list of strings")
        for item in items:
            if item.strip().startswith("-") or any(c.isspace() for c in item.strip()):
                raise VenvSpecError(f"virtualenv.{key} entry {item!r} is not a URL, path or host")
        return tuple(i.strip() for i in items)

    index_url = strings("index_url")
    if len(index_url) > 1:
        raise VenvSpecError("virtualenv.index_url must be a single URL")
    strategy = block.get("index_strategy")
    if strategy is not None and strategy not in INDEX_STRATEGIES:
        raise VenvSpecError(f"virtualenv.index_strategy must be one of {', '.join(sorted(INDEX_STRATEGIES))}")
    return IndexOptions(
        index_url=index_url[0] if index_url else None,
        extra_index_urls=strings("extra_index_url"),
        find_links=strings("find_links"),
        trusted_hosts=strings("trusted_host"),
        index_strategy=strategy,
        no_build_isolation=bool(block.get("no_build_isolation", False)),
    )
