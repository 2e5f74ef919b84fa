"""Evidence types by name, collected through the `register_evidence_types` hook."""

from __future__ import annotations

from specguard.errors import PluginError, UsageError

from .types import EvidenceType


def evidence_types() -> dict[str, EvidenceType]:
    """Every registered evidence type (built-ins come from specguard.plugins.attestation)."""
    from specguard.plugin_manager import load_plugins

    pm = load_plugins()
    found: dict[str, EvidenceType] = {}

    def register(evidence_type: EvidenceType) -> None:
        name = getattr(evidence_type, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError("an evidence type needs a non-empty str `name`", got=repr(evidence_type))
        for method in ("parse", "verify", "validate", "show"):
            if not callable(getattr(evidence_type, method, None)):
                raise PluginError(f"evidence type {name!r} lacks {method}()", field=name)
        if name in found:
            raise PluginError(f"two plugins register the evidence type {name!r}", field=name)
        found[name] = evidence_type

    pm.hook.register_evidence_types(register=register)
    return found


def get_evidence_type(name: str) -> EvidenceType:
    """The registered evidence type `name`, or a UsageError listing the known ones."""
    types = evidence_types()
    if name not in types:
        raise UsageError("unknown evidence type", field="type", got=name, expected=sorted(types))
    return types[name]
