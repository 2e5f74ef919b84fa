"""Evidence types by name.

A pure index: the caller supplies the evidence types (the plugin manager collects them from the
`register_evidence_types` hook, see `specguard.plugin_manager.registered_evidence_types`);
without any, the built-in SEV-SNP, TDX, NVIDIA and SIMULATED types are used.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from specguard.errors import PluginError, UsageError

from .types import EvidenceType

EvidenceTypes = Mapping[str, EvidenceType]


def evidence_types(types: Iterable[EvidenceType] | None = None) -> dict[str, EvidenceType]:
    """Index `types` by name, checking each has a name and the four methods and that no two share a
    name; None means the built-in types."""
    if types is None:
        from .builtin import BUILTIN_TYPES

        types = BUILTIN_TYPES
    found: dict[str, EvidenceType] = {}
    for evidence_type in types:
        name = getattr(evidence_type, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError("an evidence type needs a non-empty str `name`", got=repr(evidence_type))
        for method in ("parse", "verify", "validate", "show"):
            if not callable(getattr(evidence_type, method, None)):
                raise PluginError(f"evidence type {name!r} lacks {method}()", field=name)
        if name in found:
            raise PluginError(f"two plugins register the evidence type {name!r}", field=name)
        found[name] = evidence_type
    return found


def get_evidence_type(name: str, types: EvidenceTypes | Iterable[EvidenceType] | None = None) -> EvidenceType:
    """The evidence type `name` among `types` (a name index, a list, or None for the built-ins),
    or a UsageError listing the known ones."""
    index = types if isinstance(types, Mapping) else evidence_types(types)
    if name not in index:
        raise UsageError("unknown evidence type", field="type", got=name, expected=sorted(index))
    return index[name]
