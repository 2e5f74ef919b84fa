"""The record of one generation: what the target decided, step by step.

A `Transcript` holds the prompt and output token ids, per output position the target's
log-probability of the chosen token and its top-k alternatives, per verification step what
the drafter proposed and how much was accepted, and the metrics computed from those. It is
what receipts sign (through `binding()`), what verifier nodes re-check and what audits compare.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .canonical import canonical_json, sha256_hex
from .errors import RequestError

#: Log-probabilities in receipts and token records are rounded to this many decimals.
LOGPROB_DECIMALS = 6

SAMPLING_MODES = ("gumbel", "speculative-sampling")


@dataclass(frozen=True)
class SamplingParams:
    """Decoding parameters. temperature == 0 means greedy.

    `mode="gumbel"` (default) is seed-deterministic and re-derivable by anyone holding the
    model and the seed. `mode="speculative-sampling"` (Leviathan et al.) is for trusted local
    drafters only and is NOT re-derivable.
    """

    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    mode: str = "gumbel"
    ignore_eos: bool = False  # keep going past EOS (fixed-length outputs for benchmarks), as vLLM's ignore_eos

    def __post_init__(self) -> None:
        if not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool) or self.max_tokens < 1:
            raise RequestError("max_tokens must be a positive integer", field="max_tokens", got=self.max_tokens)
        if not (0.0 <= float(self.temperature) <= 100.0):
            raise RequestError("temperature must be in [0, 100]", field="temperature", got=self.temperature)
        if not (0.0 < float(self.top_p) <= 1.0):
            raise RequestError("top_p must be in (0, 1]", field="top_p", got=self.top_p)
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise RequestError("top_k must be a non-negative integer", field="top_k", got=self.top_k)
        if self.seed is not None and (not isinstance(self.seed, int) or not 0 <= self.seed < 2**64):
            raise RequestError("seed must be an integer in [0, 2**64)", field="seed", got=self.seed)
        if self.mode not in SAMPLING_MODES:
            raise RequestError("unknown sampling mode", field="mode", got=self.mode, expected=SAMPLING_MODES)
        if not isinstance(self.ignore_eos, bool):
            raise RequestError("ignore_eos must be a boolean", field="ignore_eos", got=self.ignore_eos)

    @property
    def greedy(self) -> bool:
        return float(self.temperature) == 0.0

    def stop_token_ids(self, eos_token_ids: set[int]) -> set[int]:
        """The token ids that end generation: the model's EOS ids, or none under `ignore_eos`."""
        return set() if self.ignore_eos else set(eos_token_ids)

    def to_json(self) -> dict[str, Any]:
        return {
            "max_tokens": self.max_tokens,
            "temperature": float(self.temperature),
            "top_p": float(self.top_p),
            "top_k": self.top_k,
            "seed": self.seed,
            "stop": list(self.stop),
            "mode": self.mode,
            "ignore_eos": self.ignore_eos,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SamplingParams:
        return cls(
            max_tokens=int(data["max_tokens"]),
            temperature=float(data.get("temperature", 0.0)),
            top_p=float(data.get("top_p", 1.0)),
            top_k=int(data.get("top_k", 0)),
            seed=data.get("seed"),
            stop=tuple(data.get("stop", ())),
            mode=data.get("mode", "gumbel"),
            ignore_eos=data.get("ignore_eos", False),
        )


@dataclass
class TokenRecord:
    """The target's view of one output position."""

    position: int
    token_id: int
    logprob: float  # the target's (temperature-1) log-probability of token_id
    top: list[tuple[int, float]] = field(default_factory=list)  # top-k (token id, logprob)
    margin: float = float("inf")  # gap between the best and second-best decision score

    def to_json(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "token_id": self.token_id,
            "logprob": round(self.logprob, LOGPROB_DECIMALS),
            "top": [[t, round(lp, LOGPROB_DECIMALS)] for t, lp in self.top],
            "margin": None if self.margin == float("inf") else round(self.margin, LOGPROB_DECIMALS),
        }


@dataclass
class Step:
    """One verification step: one target forward pass."""

    index: int
    drafter: str
    drafted: list[int]
    accepted: int
    emitted: list[int]
    rejected_proposal: str | None = None
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Transcript:
    """Everything one generation decided, plus metrics."""

    model_name: str
    model_digest: str
    tokenizer_digest: str
    prompt_ids: list[int]
    output_ids: list[int]
    tokens: list[TokenRecord]
    steps: list[Step]
    params: SamplingParams
    finish_reason: str
    drafter: str
    drafter_trusted: bool = False
    engine: str = "specguard"
    text: str = ""
    seconds: float = 0.0
    first_token_seconds: float = 0.0
    #: the engine's implementation version (`EngineCapabilities.version`); "" when not recorded
    engine_version: str = ""
    #: `sha256:` of the model file the engine ran (the GGUF for llama.cpp); "" when not recorded
    model_file_digest: str = ""
    #: False when the engine does not promise that teacher-forced scoring re-derives its tokens
    #: (`EngineCapabilities.rederivable`: e.g. llama.cpp's quantized kernels)
    engine_rederivable: bool = True
    #: the per-response receipt secret (64 hex digits) that salts every content digest a public receipt
    #: shows, the binding digest included; "" for transcripts made before receipts were salted
    salt: str = ""

    @property
    def rederivable(self) -> bool:
        """True when anyone with the model and seed can re-derive every token by teacher-forced scoring."""
        return self.engine_rederivable and self.params.mode == "gumbel" and (
            self.params.greedy or self.params.seed is not None)

    def engine_info(self) -> dict[str, str]:
        """What ran the generation: engine name, its version and the model file digest (receipts sign it)."""
        return {"name": self.engine, "version": self.engine_version, "model_file_digest": self.model_file_digest}

    def metrics(self) -> dict[str, Any]:
        steps = [s for s in self.steps if s.emitted]
        drafted = sum(len(s.drafted) for s in self.steps)
        accepted = sum(s.accepted for s in self.steps)
        emitted = sum(len(s.emitted) for s in steps)
        return {
            "output_tokens": len(self.output_ids),
            "steps": len(steps),
            "drafted_tokens": drafted,
            "accepted_tokens": accepted,
            "rejected_proposals": sum(1 for s in self.steps if s.rejected_proposal),
            "acceptance_rate": (accepted / drafted) if drafted else 0.0,
            "mean_accepted_tokens": (emitted / len(steps)) if steps else 0.0,
            "tokens_per_second": (len(self.output_ids) / self.seconds) if self.seconds > 0 else 0.0,
            "seconds": self.seconds,
            "first_token_seconds": self.first_token_seconds,
        }

    def binding(self) -> dict[str, Any]:
        """What a response is: the JSON object whose digest binds evidence to this response.

        Commitment proofs, attestation and consensus votes use `binding_digest()` as their
        context, so evidence made for one response cannot be moved onto another.
        """
        return {
            "model_digest": self.model_digest,
            "tokenizer_digest": self.tokenizer_digest,
            "prompt_ids_digest": ids_digest(self.prompt_ids),
            "output_ids_digest": ids_digest(self.output_ids),
            "params": self.params.to_json(),
            "finish_reason": self.finish_reason,
            **({"salt": self.salt} if self.salt else {}),
        }

    def binding_digest(self) -> str:
        return "sha256:" + sha256_hex(canonical_json(self.binding()))

    def to_json(self, include_steps: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model_name,
            "model_digest": self.model_digest,
            "tokenizer_digest": self.tokenizer_digest,
            "engine": self.engine,
            "engine_version": self.engine_version,
            "model_file_digest": self.model_file_digest,
            "engine_rederivable": self.engine_rederivable,
            "drafter": self.drafter,
            "drafter_trusted": self.drafter_trusted,
            "params": self.params.to_json(),
            "rederivable": self.rederivable,
            "text": self.text,
            "prompt_ids": list(self.prompt_ids),
            "output_ids": list(self.output_ids),
            "finish_reason": self.finish_reason,
            "tokens": [t.to_json() for t in self.tokens],
            "metrics": self.metrics(),
        }
        if self.salt:
            out["salt"] = self.salt
        if include_steps:
            out["steps"] = [s.to_json() for s in self.steps]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Transcript:
        tokens = [
            TokenRecord(
                position=int(t["position"]),
                token_id=int(t["token_id"]),
                logprob=float(t["logprob"]),
                top=[(int(a), float(b)) for a, b in t.get("top", [])],
                margin=float("inf") if t.get("margin") is None else float(t["margin"]),
            )
            for t in data.get("tokens", [])
        ]
        steps = [Step(**s) for s in data.get("steps", [])]
        return cls(
            model_name=data.get("model", ""),
            model_digest=data["model_digest"],
            tokenizer_digest=data["tokenizer_digest"],
            prompt_ids=[int(x) for x in data["prompt_ids"]],
            output_ids=[int(x) for x in data["output_ids"]],
            tokens=tokens,
            steps=steps,
            params=SamplingParams.from_json(data["params"]),
            finish_reason=data["finish_reason"],
            drafter=data.get("drafter", ""),
            drafter_trusted=bool(data.get("drafter_trusted", False)),
            engine=data.get("engine", "specguard"),
            text=data.get("text", ""),
            engine_version=str(data.get("engine_version", "")),
            model_file_digest=str(data.get("model_file_digest", "")),
            engine_rederivable=bool(data.get("engine_rederivable", True)),
            salt=_salt(data.get("salt", "")),
        )


def _salt(value: Any) -> str:
    if not isinstance(value, str) or (value and not (len(value) == 64 and all(c in "0123456789abcdef" for c in value))):
        raise RequestError("salt must be 64 lowercase hex digits or empty", field="salt", got=str(value)[:80])
    return value


def ids_digest(ids: list[int]) -> str:
    """`sha256:` over token ids as 4-byte big-endian unsigned integers, with a domain tag."""
    body = b"specguard/token-ids/v1\x00" + b"".join(int(i).to_bytes(4, "big") for i in ids)
    return "sha256:" + sha256_hex(body)
