"""Which weights of a family a launch loads: its format, size and quantization (Xinference's launch fields).

A family lists its variants in ``extra.formats`` (``format``, ``sizes_b``, ``quantizations``, ``sources``), but
a launch loads one set of weights: the family's own (``extra.model_id``, a packaged file, a spec path) unless
the launch names a ``model_path``. So a requested ``model_format``/``model_size_in_billions``/``quantization``
is honoured only when it is what the launch really loads; anything else is refused naming the field, never
accepted and then ignored:

* a value the family does not list at all: 400 with the values it has;
* a listed value other than the one the family's weights are, with no ``model_path``: 400 saying which weights
  the launch would load and that other weights need ``model_path``;
* with ``model_path`` the caller chose the weights; the values must still be ones the family lists, and are
  reported back by describe as given.

Pure functions of the spec and the request; the plan calls ``check_variant`` before anything starts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from xinfd.errors import InvalidRequestError
from xinfd.types import ModelSpec


@dataclass(frozen=True, slots=True, kw_only=True)
class Variant:
    """One set of weights: each field None when not known (or not asked for)."""

    model_format: str | None = None
    model_size_in_billions: float | None = None
    quantization: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "model_format": self.model_format,
            "model_size_in_billions": display_size(self.model_size_in_billions),
            "quantization": self.quantization,
        }


def display_size(size: float | None) -> int | float | None:
    """``7.0`` as ``7`` (Xinference's sizes are ints, or strings such as ``"0_5"`` for fractions)."""
    if size is None:
        return None
    return int(size) if float(size).is_integer() else size


def parse_size(value: Any) -> float | None:
    """A size as Xinference's client sends it: an int, a float, or a string (``"7"``, ``"0.5"``, ``"1_8"``)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidRequestError(f"model_size_in_billions must be a number, got {value!r}",
                                  param="model_size_in_billions")
    if isinstance(value, int | float):
        size = float(value)
    elif isinstance(value, str):
        try:
            size = float(value.strip().replace("_", "."))
        except ValueError:
            raise InvalidRequestError(f"model_size_in_billions must be a number, got {value!r}",
                                      param="model_size_in_billions") from None
    else:
        raise InvalidRequestError(f"model_size_in_billions must be a number, got {value!r}",
                                  param="model_size_in_billions")
    if not size > 0:
        raise InvalidRequestError(f"model_size_in_billions must be > 0, got {value!r}",
                                  param="model_size_in_billions")
    return size


def formats(spec: ModelSpec) -> list[Mapping[str, Any]]:
    raw = spec.extra.get("formats")
    return [f for f in raw if isinstance(f, Mapping) and isinstance(f.get("format"), str)] if isinstance(
        raw, list) else []


def _sizes(entry: Mapping[str, Any]) -> list[float]:
    raw = entry.get("sizes_b")
    return [float(s) for s in raw if isinstance(s, int | float) and not isinstance(s, bool)] if isinstance(
        raw, list) else []


def _quantizations(entry: Mapping[str, Any]) -> list[str]:
    raw = entry.get("quantizations")
    return [str(q) for q in raw] if isinstance(raw, list) else []


def default_variant(spec: ModelSpec) -> Variant:
    """The weights a launch without ``model_path`` loads, as far as the family says.

    The format (and size) whose Hugging Face source, with ``{size}`` filled in, is the family's ``model_id``;
    failing that, the only format if there is one. The quantization is known when that format lists one.
    """
    entries = formats(spec)
    model_id = spec.extra.get("model_id")
    for entry in entries:
        sources = entry.get("sources")
        template = sources.get("huggingface") if isinstance(sources, Mapping) else None
        if not isinstance(template, str) or not isinstance(model_id, str):
            continue
        sizes: list[float | None] = list(_sizes(entry))
        if not sizes:
            sizes = [None]
        for size in sizes:
            filled = template.replace("{size}", f"{display_size(size)}") if size is not None else template
            if filled == model_id:
                return _variant_of(entry, size)
    if len(entries) == 1:
        only = _sizes(entries[0])
        return _variant_of(entries[0], only[0] if len(only) == 1 else None)
    return Variant()


def _variant_of(entry: Mapping[str, Any], size: float | None) -> Variant:
    quantizations = _quantizations(entry)
    return Variant(
        model_format=str(entry["format"]),
        model_size_in_billions=size,
        quantization=quantizations[0] if len(quantizations) == 1 else None,
    )


def _listed(values: Sequence[Any]) -> str:
    return ", ".join(str(display_size(v) if isinstance(v, float) else v) for v in values) or "none"


def check_variant(spec: ModelSpec, wanted: Variant, *, model_path: bool) -> None:
    """Refuse (400 naming the field) a format, size or quantization this launch would not load."""
    if wanted == Variant():
        return
    entries = formats(spec)
    if not entries:
        field = next(k for k, v in wanted.to_json().items() if v is not None)
        raise InvalidRequestError(
            f"{field}: family {spec.name!r} lists no formats, sizes or quantizations; leave {field} unset",
            param=field,
        )
    candidates = list(entries)
    if wanted.model_format is not None:
        candidates = [e for e in entries if e["format"] == wanted.model_format]
        if not candidates:
            raise InvalidRequestError(
                f"model_format {wanted.model_format!r} is not a format of {spec.name!r} "
                f"(it has: {_listed([e['format'] for e in entries])})",
                param="model_format",
            )
    if wanted.model_size_in_billions is not None:
        sized = [e for e in candidates if wanted.model_size_in_billions in _sizes(e)]
        if not sized:
            have = sorted({s for e in candidates for s in _sizes(e)})
            raise InvalidRequestError(
                f"model_size_in_billions {display_size(wanted.model_size_in_billions)} is not a size of "
                f"{spec.name!r}{_in_format(wanted)} (it has: {_listed(have)})",
                param="model_size_in_billions",
            )
        candidates = sized
    if wanted.quantization is not None:
        quantized = [e for e in candidates if wanted.quantization in _quantizations(e)]
        if not quantized:
            have_q = sorted({q for e in candidates for q in _quantizations(e)})
            raise InvalidRequestError(
                f"quantization {wanted.quantization!r} is not a quantization of {spec.name!r}{_in_format(wanted)} "
                f"(it has: {_listed(have_q)})",
                param="quantization",
            )
    if model_path:
        return  # the caller chose the weights; the values describe them
    loaded = default_variant(spec)
    for field, value in wanted.to_json().items():
        have_value = loaded.to_json()[field]
        if value is not None and have_value is not None and value != have_value:
            raise InvalidRequestError(
                f"{field}: launching {spec.name!r} loads its {_describe(loaded)} weights"
                f"{_source(spec)}, not {field}={value!r}; to serve other weights, pass model_path (a local "
                "folder or file holding them)",
                param=field,
            )


def _in_format(wanted: Variant) -> str:
    return f" in format {wanted.model_format!r}" if wanted.model_format is not None else ""


def _describe(variant: Variant) -> str:
    parts = [
        variant.model_format or "",
        f"{display_size(variant.model_size_in_billions)}B" if variant.model_size_in_billions is not None else "",
        f"quantization {variant.quantization}" if variant.quantization is not None else "",
    ]
    return " ".join(p for p in parts if p)


def _source(spec: ModelSpec) -> str:
    model_id = spec.extra.get("model_id")
    return f" ({model_id})" if isinstance(model_id, str) else ""


def launched_variant(spec: ModelSpec, wanted: Variant, *, model_path: bool) -> Variant:
    """What describe reports: the values asked for, completed with the family's own where it loads those."""
    if model_path:
        return wanted
    loaded = default_variant(spec)
    return Variant(
        model_format=wanted.model_format or loaded.model_format,
        model_size_in_billions=wanted.model_size_in_billions or loaded.model_size_in_billions,
        quantization=wanted.quantization or loaded.quantization,
    )
