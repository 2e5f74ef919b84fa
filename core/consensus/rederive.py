"""Judge a transcript by re-deriving it: one teacher-forced forward pass of the verifier's model.

A verifier holding its own copy of the target model checks, for a transcript (prompt ids,
output ids, sampling parameters, seed, claimed per-token log-probabilities):

1. re-derivability: greedy, or Gumbel-max sampling with a recorded seed. Anything else
   (speculative-sampling mode, a sampled request without seed) is "unverifiable", never accepted;
2. identity: the transcript names the verifier's model and tokenizer digests;
3. tokens: every output token is the target's own choice at its position (greedy argmax, or the
   argmax of the seed's Gumbel-perturbed log-probabilities), except near-ties whose decision
   scores differ by at most `margin`;
4. log-probabilities: each claimed logprob (and each claimed top-k alternative) is within
   `logprob_tolerance` of the recomputed value;
5. stops and lengths: "stop" needs EOS as the last token or a stop string completed by the last
   token; "length" needs len == max_tokens or the end of the context; no EOS or stop string
   may occur earlier; "cancelled" (a generation the client abandoned) is never certified.
   Stop strings are found with O(log n) decodes of the output, not one per prefix.

Which tolerances apply depends on the engine the transcript names and on what this verifier can
do (`Tolerances.for_engine`), and the vote signs the resulting profile (specguard.consensus.profiles):
`exact` for engines that compute the reference rule on the same fp32 torch model (`EXACT_ENGINES`:
specguard, transformers); `same-engine:NAME` when the verifier re-executes engine NAME itself on the
model file the transcript names (llama.cpp on the same GGUF: `llamacpp_rederive`), within that
engine's own measured noise; `cross-engine:NAME` when it can't and its operator configured a
[consensus.engines.NAME] table (a loose margin, capped at floor(fraction x tokens) within-margin
disagreements per response), which auditors count only when they say so; otherwise the verifier
refuses (`UnknownEngineError`: no vote). The judgement's stats (signed into the vote) say which
engine, profile, margin, tolerance, cap and how many deviations.

The default margin and tolerance come from `specguard.consensus.calibrate` (see
docs/consensus.md for the measurement): honest fp32 runs differ only by kernel rounding (<2e-5
in logits and log-probabilities), so the defaults (1e-3) leave a 50x safety factor while staying
far below what an altered token or a substituted model changes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import RequestError
from ..models import LoadedModel, names_model
from ..transcript import Transcript
from .config import EXACT_ENGINES, EngineTolerance, UnknownEngineError
from .profiles import CROSS_ENGINE, EXACT, SAME_ENGINE, profile_name

ACCEPT = "accept"
REJECT = "reject"
UNVERIFIABLE = "unverifiable"
VERDICTS = (ACCEPT, REJECT, UNVERIFIABLE)

#: Near-tie margin in decision-score units (logits for greedy, log p + Gumbel for sampled).
#: `specguard consensus calibrate` on SmolLM2-135M fp32 (torch threads 1/2, drafters none/ngram,
#: greedy and seeded sampling; 1152 re-scored tokens) measured logit/logprob drift of at most
#: 1.9e-5 and no flipped decision; this margin is 50x that drift and equals the engine's
#: NEAR_TIE_EPSILON. A token that is not the target's choice is accepted only within it.
DEFAULT_MARGIN = 1e-3

#: Tolerance on claimed log-probabilities (transcripts round them to 6 decimals): 50x the
#: calibrated honest fp32 maximum of 1.9e-5. A bfloat16 verifier drifts by ~0.12 and fails it.
DEFAULT_LOGPROB_TOLERANCE = 1e-3

#: How many mismatch details a judgement keeps (the counts are always complete).
MAX_DETAILS = 8


@dataclass(frozen=True)
class EngineCheck:
    """The tolerances one transcript is judged with, resolved from its engine name (and model file).

    `kind` is "exact", "same-engine" (`runtime` re-executes the engine on the same file) or
    "cross-engine" (`cross`: the verifier's torch model with a loose, capped margin);
    `profile` is the signed name (`profiles.profile_name`: exact, same-engine:NAME, cross-engine:NAME).
    """

    engine: str
    kind: str
    margin: float
    logprob_tolerance: float
    cross: EngineTolerance | None = None
    runtime: Any = None  # a same-engine re-executor (llamacpp_rederive.LlamaCppSameEngine)

    @property
    def profile(self) -> str:
        return profile_name(self.kind, self.engine)

    def margin_for(self, params: Any) -> float:
        """The margin in decision-score units: engine margins are calibrated in logits, and a sampled
        request's scores are log p at temperature T (plus noise), so logit drift is / T."""
        if self.kind == EXACT or params.greedy:
            return self.margin
        return self.margin / float(params.temperature)

    def allowed_near_ties(self, tokens: int) -> int | None:
        """The per-response cap on within-margin disagreements (None: no cap, exact or same-engine)."""
        return None if self.cross is None else self.cross.allowed_near_ties(tokens)


@dataclass(frozen=True)
class Tolerances:
    """How far an honest re-derivation may differ from the transcript: exact for the engines in
    EXACT_ENGINES; same-engine where a runtime re-executes the engine on the transcript's model
    file; per [consensus.engines.NAME] table (cross-engine) where the operator configured one;
    refused for the rest."""

    margin: float = DEFAULT_MARGIN
    logprob_tolerance: float = DEFAULT_LOGPROB_TOLERANCE
    engines: tuple[EngineTolerance, ...] = ()
    same_engine: tuple[Any, ...] = ()  # re-executors with .engine, .margin, .logprob_tolerance, .unavailable_reason

    def for_engine(self, engine: Any, file_digest: Any = None) -> EngineCheck:
        """The check for a transcript of `engine` that ran the model file `file_digest`:
        UnknownEngineError when there is none (no vote)."""
        if engine in EXACT_ENGINES:
            return EngineCheck(engine, EXACT, self.margin, self.logprob_tolerance)
        why: list[str] = []
        for runtime in self.same_engine:
            if runtime.engine == engine:
                reason = runtime.unavailable_reason(file_digest)
                if reason is None:
                    return EngineCheck(engine, SAME_ENGINE, runtime.margin, runtime.logprob_tolerance, None, runtime)
                why.append(f"same-engine: {reason}")
        for table in self.engines:
            if table.engine == engine:
                return EngineCheck(engine, CROSS_ENGINE, table.margin, table.logprob_tolerance, table)
        shown = engine if isinstance(engine, str) else type(engine).__name__
        raise UnknownEngineError(
            "this verifier cannot re-execute the transcript's engine on its model file and has no cross-engine "
            "table for it: it does not vote" + (f" ({'; '.join(why)})" if why else ""),
            field="transcript.engine", got=shown,
            expected=sorted({*EXACT_ENGINES, *(r.engine for r in self.same_engine), *(t.engine for t in self.engines)}),
        )

    def __post_init__(self) -> None:
        for name in ("margin", "logprob_tolerance"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or not 0 <= value <= 1:
                raise RequestError(f"{name} must be a number in [0, 1]", field=name, got=value)

    @classmethod
    def from_policy(cls, policy: Any, model: Any = None) -> Tolerances:
        """Tolerances from a policy's typed [consensus] table (`config.consensus_policy`), defaults where absent.

        Same-engine llama.cpp re-execution is set up from [consensus.same_engine.llamacpp], or, when the
        verifier's own `model` was loaded from a GGUF, on that file.
        """
        from .config import ConsensusPolicy, consensus_policy

        pol = policy if isinstance(policy, ConsensusPolicy) else consensus_policy(policy)
        return cls(
            margin=DEFAULT_MARGIN if pol.margin is None else pol.margin,
            logprob_tolerance=DEFAULT_LOGPROB_TOLERANCE if pol.logprob_tolerance is None else pol.logprob_tolerance,
            engines=pol.engines,
            same_engine=same_engine_runtimes(pol, model),
        )


def same_engine_runtimes(pol: Any, model: Any) -> tuple[Any, ...]:
    """The same-engine re-executors of a verifier: each [consensus.same_engine.NAME] table, and llama.cpp on
    the verifier's own GGUF when it has one and no table says otherwise."""
    from pathlib import Path

    from .llamacpp_rederive import LlamaCppSameEngine

    tables = {t.engine: t for t in pol.same_engine}
    gguf = None
    if model is not None:
        from ..llamacpp_runtime import target_gguf

        gguf = target_gguf(model)
    table = tables.get("llamacpp")
    path = Path(table.gguf).expanduser() if table is not None and table.gguf else gguf
    if path is None:
        return ()
    n_ctx = min(int(getattr(model, "max_context", 4096) or 4096), 8192) if model is not None else 4096
    runtime = LlamaCppSameEngine(path, threads=table.threads if table else 1, n_ctx=n_ctx)
    if table is not None and table.margin is not None:
        runtime.margin = table.margin
    if table is not None and table.logprob_tolerance is not None:
        runtime.logprob_tolerance = table.logprob_tolerance
    return (runtime,)


@dataclass
class Judgement:
    """A verifier's verdict on one transcript, with the reasons and statistics behind it."""

    verdict: str
    reasons: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    #: the re-derived positions (`engine.scoring` results) when the transcript was re-scored
    positions: list[Any] = field(default_factory=list, repr=False)

    @property
    def accepted(self) -> bool:
        return self.verdict == ACCEPT

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "reasons": list(self.reasons), "stats": dict(self.stats)}


def _r(x: float) -> float | None:
    """Round for JSON; infinities (no runner-up) become None."""
    return round(float(x), 6) if math.isfinite(x) else None


def stop_string_hit(model: LoadedModel, ids: list[int], stops: tuple[str, ...] | list[str]) -> bool:
    """True when the decoding of `ids` contains one of `stops`."""
    if not stops or not ids:
        return False
    text = model.decode(list(ids))
    return any(s in text for s in stops)


def first_stop_prefix(model: LoadedModel, ids: list[int], stops: tuple[str, ...] | list[str]) -> int | None:
    """The length of the shortest prefix of `ids` whose decoding contains a stop string, or None.

    What the engine cuts at. Decoding a longer prefix only appends text, so "contains a stop
    string" is monotone in the prefix length and a binary search needs O(log n) decodes (one
    decode per prefix, as before, cost 47 s under the verifier's lock for a long output).
    """
    if not stop_string_hit(model, ids, stops):
        return None
    lo, hi = 1, len(ids)  # the answer is in [lo, hi]; hi always hits
    while lo < hi:
        mid = (lo + hi) // 2
        if stop_string_hit(model, ids[:mid], stops):
            hi = mid
        else:
            lo = mid + 1
    return hi


def check_stop_and_length(model: LoadedModel, transcript: Transcript) -> list[str]:
    """Reasons why the finish reason is inconsistent with the output (empty when consistent).

    A handful of decodes of the output whatever its length (see `first_stop_prefix`).
    """
    out = transcript.output_ids
    params = transcript.params
    eos = params.stop_token_ids(model.eos_token_ids)
    reasons: list[str] = []
    finish = transcript.finish_reason
    if finish == "cancelled":
        return ["finish_reason: 'cancelled' is never certified (the generation was abandoned; the client's body "
                "would show a truncated output as 'length')"]
    if finish not in ("stop", "length"):
        return [f"finish_reason: unknown value {finish!r}, expected stop|length"]
    early_eos = next((i for i, t in enumerate(out[:-1]) if t in eos), None)
    if early_eos is not None:
        reasons.append(f"output_ids[{early_eos}]: EOS before the last token (generation must stop there)")
    if len(out) > params.max_tokens:
        reasons.append(f"output_ids: {len(out)} tokens, more than max_tokens={params.max_tokens}")
    context_end = len(transcript.prompt_ids) + len(out) >= model.max_context
    first = first_stop_prefix(model, out, params.stop) if params.stop else None
    # the engine cuts at the shortest prefix containing a stop string: no shorter prefix may contain one
    if first is not None and first < len(out):
        reasons.append(f"output_ids: stop string already complete after {first} tokens, output has {len(out)}")
    ends_with_stop = first is not None
    last_is_eos = bool(out) and out[-1] in eos
    if finish == "stop":
        if not (last_is_eos or ends_with_stop):
            reasons.append("finish_reason: 'stop' but the last token is not EOS and no stop string ends the output")
    else:  # length
        if last_is_eos:
            reasons.append("finish_reason: 'length' but the last token is EOS (expected 'stop')")
        elif ends_with_stop:
            reasons.append("finish_reason: 'length' but a stop string ends the output (expected 'stop')")
        elif len(out) != params.max_tokens and not context_end:
            reasons.append(f"finish_reason: 'length' with {len(out)} tokens; expected max_tokens="
                           f"{params.max_tokens} or the end of the context ({model.max_context})")
    return reasons


def judge(model: LoadedModel, transcript: Transcript, tolerances: Tolerances | None = None) -> Judgement:
    """Re-derive `transcript` with `model` and return accept / reject / unverifiable with reasons."""
    params = transcript.params
    # unknown engine, or one this verifier cannot re-execute on the transcript's file: no vote at all
    tol = (tolerances or Tolerances()).for_engine(transcript.engine, transcript.model_file_digest)
    margin = tol.margin_for(params) if params.mode == "gumbel" else tol.margin
    allowed = tol.allowed_near_ties(len(transcript.output_ids))
    stats = _judgement_stats(transcript, tol, margin, allowed)
    if params.mode != "gumbel" and not params.greedy:
        return Judgement(UNVERIFIABLE, [f"params.mode: {params.mode!r} is not re-derivable (only greedy or "
                                        "seeded gumbel sampling is)"], stats)
    if not params.greedy and params.seed is None:
        return Judgement(UNVERIFIABLE, ["params.seed: sampled request without a seed is not re-derivable"], stats)
    reasons = _identity_reasons(model, transcript)
    if reasons:
        return Judgement(REJECT, reasons, stats)
    reasons = check_stop_and_length(model, transcript)
    t0 = time.perf_counter()
    try:
        result = _rescore(model, transcript, tol)
    except RequestError as exc:
        return Judgement(REJECT, reasons + [f"rescoring refused the transcript: {exc.summary()}"], stats)
    stats["score_seconds"] = round(time.perf_counter() - t0, 6)
    tally = _Tally()
    for pos, rec in zip(result.positions, transcript.tokens, strict=True):
        tally.compare(pos, rec, margin, tol.logprob_tolerance)
    stats.update(tally.stats(len(result.positions)))
    reasons.extend(tally.reasons(allowed, tol, len(transcript.output_ids)))
    return Judgement(REJECT if reasons else ACCEPT, reasons, stats, list(result.positions))


def _judgement_stats(transcript: Transcript, tol: EngineCheck, margin: float, allowed: int | None) -> dict[str, Any]:
    """What every vote's stats say, re-derived or not: sizes, mode and the tolerance profile (signed: the
    auditor decides whether this profile counts)."""
    params = transcript.params
    stats: dict[str, Any] = {
        "output_tokens": len(transcript.output_ids),
        "prompt_tokens": len(transcript.prompt_ids),
        "mode": "greedy" if params.greedy else params.mode,
        "engine": tol.engine,
        "profile": tol.profile,
        "tolerance_profile": tol.kind,
        "margin": margin,
        "logprob_tolerance": tol.logprob_tolerance,
        "max_near_ties": allowed,
        "max_deviations": allowed,
    }
    if tol.runtime is not None:
        stats["model_file_digest"] = transcript.model_file_digest
    return stats


def _identity_reasons(model: LoadedModel, transcript: Transcript) -> list[str]:
    """The transcript must name this verifier's model and tokenizer, and its token records its output ids."""
    reasons: list[str] = []
    if not names_model(model, transcript.model_digest):  # v3, or a GGUF's v2 from before v3
        reasons.append(f"model_digest: transcript names {transcript.model_digest}, verifier holds {model.digest}")
    if transcript.tokenizer_digest != model.tokenizer_digest:
        reasons.append(f"tokenizer_digest: transcript names {transcript.tokenizer_digest}, "
                       f"verifier holds {model.tokenizer_digest}")
    if len(transcript.tokens) != len(transcript.output_ids):
        reasons.append(f"tokens: {len(transcript.tokens)} token records for {len(transcript.output_ids)} output ids")
        return reasons
    for i, (rec, tok) in enumerate(zip(transcript.tokens, transcript.output_ids, strict=True)):
        if rec.position != i or rec.token_id != tok:
            reasons.append(f"tokens[{i}]: record (position {rec.position}, token {rec.token_id}) does not "
                           f"match output_ids[{i}]={tok}")
            break
    return reasons


def _rescore(model: LoadedModel, transcript: Transcript, tol: EngineCheck) -> Any:
    """The target's teacher-forced scores of the transcript's output ids: re-executed on the same file by
    the same engine, or by this verifier's model."""
    from ..engine.scoring import score

    top_n = max((len(t.top) for t in transcript.tokens), default=0)
    # claimed alternatives must be among the target's top n + 2 (n + 16 across engines, whose ranks
    # near the n-th alternative can swap)
    extra = 2 if tol.cross is None else 16
    top_k = min(top_n + extra, model.vocab_size)
    if tol.runtime is not None:  # same engine, same file: re-executed, teacher-forced
        return tol.runtime.score(transcript.prompt_ids, transcript.output_ids, transcript.params, top_k)
    return score(model, transcript.prompt_ids, transcript.output_ids, transcript.params, top_k=top_k)


@dataclass
class _Tally:
    """Where the claimed tokens, logprobs and alternatives differ from the re-derived ones."""

    near_ties: int = 0
    mismatches: int = 0
    lp_errors: int = 0
    top_errors: int = 0
    max_lp_err: float = 0.0
    min_margin: float = math.inf
    details: list[str] = field(default_factory=list)

    def _detail(self, text: str) -> None:
        if len(self.details) < MAX_DETAILS:
            self.details.append(text)

    def compare(self, pos: Any, rec: Any, margin: float, tolerance: float) -> None:
        """One position: the token (a near tie within `margin` counts apart), its logprob, its top alternatives."""
        self.min_margin = min(self.min_margin, pos.margin)
        if not pos.agrees and pos.given_score_gap <= margin:
            self.near_ties += 1
        elif not pos.agrees:
            self.mismatches += 1
            self._detail(f"output_ids[{pos.position}]: token {pos.token_id} is not the target's choice "
                         f"{pos.expected_id} (score gap {_r(pos.given_score_gap)} > margin {_r(margin)})")
        err = abs(rec.logprob - pos.logprob) if math.isfinite(rec.logprob) else math.inf
        self.max_lp_err = max(self.max_lp_err, err)
        if err > tolerance:
            self.lp_errors += 1
            self._detail(f"tokens[{pos.position}].logprob: claimed {rec.logprob}, recomputed "
                         f"{round(pos.logprob, 6)} (tolerance {tolerance})")
        recomputed = dict(pos.top)
        for alt, alt_lp in rec.top:
            if alt not in recomputed:
                self.top_errors += 1
                self._detail(f"tokens[{pos.position}].top: {alt} is not among the target's top "
                             f"{len(pos.top)} alternatives")
            elif not math.isfinite(alt_lp) or abs(alt_lp - recomputed[alt]) > tolerance:
                self.top_errors += 1
                self._detail(f"tokens[{pos.position}].top[{alt}]: claimed {alt_lp}, recomputed "
                             f"{round(recomputed[alt], 6)}")

    def stats(self, positions: int) -> dict[str, Any]:
        return {
            "agreeing_tokens": positions - self.near_ties - self.mismatches,
            "near_ties": self.near_ties,
            "deviations": self.near_ties,
            "mismatched_tokens": self.mismatches,
            "logprob_errors": self.lp_errors,
            "top_errors": self.top_errors,
            "max_logprob_error": _r(self.max_lp_err),
            "min_margin": _r(self.min_margin),
        }

    def reasons(self, allowed: int | None, tol: EngineCheck, output_tokens: int) -> list[str]:
        """Why the transcript is rejected (empty: accepted), the counts first, then the first details."""
        reasons: list[str] = []
        if self.mismatches:
            reasons.append(f"{self.mismatches} output token(s) are not the target's choice")
        if allowed is not None and self.near_ties > allowed:
            reasons.append(f"{self.near_ties} output token(s) differ from the target's choice within the margin, "
                           f"more than the {allowed} engine {tol.engine!r} may have in {output_tokens} tokens "
                           f"(max_near_tie_fraction {tol.cross.max_near_tie_fraction}, max_near_ties "
                           f"{tol.cross.max_near_ties})")
        if self.lp_errors:
            reasons.append(f"{self.lp_errors} claimed logprob(s) differ from the target's beyond tolerance")
        if self.top_errors:
            reasons.append(f"{self.top_errors} claimed top-k alternative(s) differ from the target's")
        return reasons + self.details
