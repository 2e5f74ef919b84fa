"""Receipts made the way a node makes them (ReceiptIssuer, real keys and log), and the real
`specguard` CLI run in-process, for the offline-verification security tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from specguard.attest.receipts import ReceiptIssuer, new_receipt_secret
from specguard.keys import NodeKey, load_or_create_node_key
from specguard.transcript import SamplingParams, TokenRecord, Transcript

MODEL_DIGEST = "sha256:" + "a" * 64
TOKENIZER_DIGEST = "sha256:" + "b" * 64
REQUEST = {"model": "tiny", "prompt": "hi", "max_tokens": 4, "temperature": 0.0, "seed": 1}
RESPONSE = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "tiny",
            "choices": [{"index": 0, "text": "abcd", "logprobs": None, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}}


class Policy:
    name = "test"
    digest = "sha256:" + "c" * 64


def transcript(output_ids: list[int] | None = None, *, text: str = "abcd", finish: str = "length",
               stop: tuple[str, ...] = (), model_digest: str = MODEL_DIGEST,
               tokenizer_digest: str = TOKENIZER_DIGEST) -> Transcript:
    ids = list(output_ids if output_ids is not None else [10, 11, 12, 13])
    tokens = [TokenRecord(position=i, token_id=t, logprob=-0.5) for i, t in enumerate(ids)]
    return Transcript(model_name="tiny", model_digest=model_digest, tokenizer_digest=tokenizer_digest,
                      prompt_ids=[1, 2], output_ids=ids, tokens=tokens, steps=[],
                      params=SamplingParams(max_tokens=max(1, len(ids)), stop=stop), finish_reason=finish,
                      drafter="none", text=text, salt=new_receipt_secret())  # set before evidence, as the server does


class Issuer:
    """A node key and log in `home`; `issue(...)` returns a receipt document."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.key: NodeKey = load_or_create_node_key(self.home)
        self._issuer = ReceiptIssuer(self.home, self.key)

    def issue(self, evidence: dict[str, Any] | None = None, *, t: Transcript | None = None,
              request: dict[str, Any] | None = None, response: dict[str, Any] | None = None,
              receipt_id: str | None = None) -> dict[str, Any]:
        return self._issuer.issue(t or transcript(), request or REQUEST, response or RESPONSE,
                                  dict(evidence or {}), Policy(), receipt_id=receipt_id)

    def checkpoint(self) -> str:
        return self._issuer.log.checkpoint()

    def close(self) -> None:
        self._issuer.close()


def write_json(path: Path, obj: Any) -> str:
    Path(path).write_text(json.dumps(obj, indent=2), "utf-8")
    return str(path)


def run_cli(args: list[str], capsys: Any) -> tuple[int, dict[str, Any] | None, str]:
    """Run `specguard ARGS` through its real entry point; (exit code, parsed --json output or None, stderr)."""
    from specguard.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    try:
        out = json.loads(captured.out) if captured.out.strip().startswith("{") else None
    except json.JSONDecodeError:
        out = None
    return code, out, captured.err
