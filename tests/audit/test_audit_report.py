"""What a person sees after `specguard audit run`: the HTML report rendered in headless Chromium
(headline, prompt-by-prompt divergence), the human summary on stdout, and setup mistakes
(404, 401, nothing listening) as usage errors with a hint instead of an "inconclusive" verdict."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from support.audit_loopback import loopback
from support.audit_providers import make_audit_model_dir
from support.cli import run
from support.servers import free_port

from specguard.audit import calibrate
from specguard.audit.run import load_prompts
from specguard.audit.simulate import build_app
from specguard.models import load_model

TOKENS = 10
HEADLINE = re.compile(r"(\d+\.\d)% of the provider's tokens differ from what (\S+) would choose; "
                      r"honest engines differ on at most (\d+\.\d)%")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    ref_dir = make_audit_model_dir(base / "ref", seed=0)
    ref = load_model(str(ref_dir))
    other = load_model(str(make_audit_model_dir(base / "other", seed=1)))
    prompts = base / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}: tell me about topic number {i}."}) + "\n"
                               for i in range(4)))
    ids = [ref.encode_chat([{"role": "user", "content": p}]) for p in load_prompts(str(prompts), 4)]
    cal = base / "calibration.json"
    calibrate.save(calibrate.calibrate(ref, ids, TOKENS, 5, setups=calibrate.HONEST_CLASSES["fp32"]), cal)
    with loopback(build_app(ref)) as good, loopback(build_app(other, served_name="claimed")) as bad:
        yield {"base": base, "ref_dir": ref_dir, "prompts": prompts, "cal": cal, "good": good, "bad": bad}


def _args(env, url, out, *extra):
    return ["audit", "run", "--base-url", url, "--model", "claimed", "--reference", str(env["ref_dir"]),
            "--prompts", str(env["prompts"]), "--budget", "4", "--max-tokens", str(TOKENS), "--honest-class", "fp32",
            "--calibration", str(env["cal"]), "--min-effect-tokens", "0.5", "--timeout", "30", "--max-retries", "1",
            "--out", str(env["base"] / out), *extra]


class VisibleText(HTMLParser):
    """The text a reader sees: everything in <body> but style, script and hidden elements."""

    SKIP = {"style", "script", "template", "head", "title"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, bool]] = []
        self.parts: list[str] = []
        self.marks: list[str] = []
        self._in_mark = 0

    VOID = {"meta", "link", "br", "hr", "img", "input", "col", "area", "base", "source", "wbr"}

    def handle_starttag(self, tag, attrs):
        if tag in self.VOID:
            return
        hidden = tag in self.SKIP or any(k == "hidden" for k, _ in attrs) or \
            any(k == "style" and v and "display:none" in v.replace(" ", "") for k, v in attrs)
        self.stack.append((tag, hidden or (bool(self.stack) and self.stack[-1][1])))
        if tag == "mark":
            self._in_mark += 1
            self.marks.append("")

    def handle_startendtag(self, tag, attrs):
        return  # <circle/> and the like: no text

    def handle_endtag(self, tag):
        while self.stack:
            if self.stack.pop()[0] == tag:
                break
        if tag == "mark":
            self._in_mark -= 1

    def handle_data(self, data):
        if self.stack and self.stack[-1][1]:
            return
        self.parts.append(data)
        if self._in_mark:
            self.marks[-1] += data

    @property
    def text(self) -> str:
        return re.sub(r"\s+", " ", "".join(self.parts))


def chromium(html_file: Path, tmp: Path, screenshot: Path | None = None) -> VisibleText:
    """Load the report in headless Chromium and parse the DOM it rendered."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "headless Chromium is needed for this test: `make install` installs the Debian package chromium"
    flags = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp / 'chromium-profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", html_file.as_uri()], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    if screenshot is not None:
        subprocess.run([*flags, "--hide-scrollbars", "--window-size=1200,1400", f"--screenshot={screenshot}",
                        html_file.as_uri()], capture_output=True, timeout=120, check=True)
    page = VisibleText()
    page.feed(dom)
    assert "<body" in dom, dom[:200]
    return page


def test_substituted_report_as_a_person_sees_it(env, capsys, tmp_path):
    code, out, err = run(capsys, *_args(env, env["bad"], "bad"))
    assert code == 4, out + err
    report = json.loads((env["base"] / "bad" / "report.json").read_text())
    assert report["verdict"] == "substituted"
    # stdout: a human summary and where the report is, not JSON
    assert out.startswith("verdict: substituted\n")
    assert report["headline"] in out and f"report: {env['base'] / 'bad' / 'report.html'}" in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)
    rate, ref_name, honest = HEADLINE.search(report["headline"]).groups()
    ta = next(t for t in report["tests"] if t["name"] == "token_agreement")
    assert float(rate) == pytest.approx(100 * ta["statistic"], abs=0.051) and float(rate) > float(honest)
    assert ref_name == report["reference"]["name"]

    shot = tmp_path / "audit-report.png"
    page = chromium(env["base"] / "bad" / "report.html", tmp_path, screenshot=shot)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    text = page.text
    assert "specguard audit: substituted" in text
    assert report["headline"] in text
    assert "consistent" not in text.lower(), "a substituted report must not say consistent anywhere"
    assert "Positions set aside as repetition-penalty demotions: 0 (0.0% of scored positions; limit 10%" in text
    # prompt by prompt: each prompt with the provider's and the reference's text, the first divergence marked
    assert "Prompt by prompt" in text
    diverged = [r for r in report["per_prompt"] if r.get("divergence")]
    assert diverged, report["per_prompt"]
    for r in diverged:
        d = r["divergence"]
        assert r["prompt"] in text
        assert d["provider_token"] != d["reference_token"]
        assert f"token {d['position'] + 1} (" in text
    shown = [m for m in page.marks if m != "highlighted"]
    assert len(shown) == 2 * len(diverged)  # one mark in the provider's text, one in the reference's
    first = diverged[0]["divergence"]
    assert shown[:2] == [first["provider_token"] if first["provider_token"].strip() else repr(first["provider_token"]),
                         first["reference_token"] if first["reference_token"].strip()
                         else repr(first["reference_token"])]

    code, out, _ = run(capsys, *_args(env, env["bad"], "bad", "--json"))
    assert code == 4 and json.loads(out)["verdict"] == "substituted"


def test_consistent_report_states_its_claim_and_no_divergence(env, capsys, tmp_path):
    code, out, err = run(capsys, *_args(env, env["good"], "good"))
    assert code == 0, out + err
    report = json.loads((env["base"] / "good" / "report.json").read_text())
    assert out.startswith("verdict: consistent\n") and report["headline"].startswith("0.0% of the provider's tokens")
    text = chromium(env["base"] / "good" / "report.html", tmp_path).text
    assert report["headline"] in text and "What this verdict claims: identical implementation" in text
    assert text.count("the reference chooses every token the provider chose") == 4


def _setup_error(capsys, env, url, *extra):
    code, out, err = run(capsys, *_args(env, url, f"setup-{free_port()}", "--max-retries", "3", *extra))
    return code, out + err


def test_wrong_url_missing_key_or_no_server_is_a_usage_error_with_a_hint(env, capsys):
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    code, text = _setup_error(capsys, env, env["good"].removesuffix("/v1"))  # /v1 forgotten: 404
    assert code == 2, text
    assert "404" in text and "is /v1 in the base URL" in text

    keyed = FastAPI()

    @keyed.post("/v1/chat/completions")
    def refuse() -> JSONResponse:
        return JSONResponse({"error": {"message": "invalid api key"}}, status_code=401)

    with loopback(keyed) as url:
        code, text = _setup_error(capsys, env, url)
    assert code == 2, text
    assert "401" in text and "set --api-key-env" in text

    code, text = _setup_error(capsys, env, f"http://127.0.0.1:{free_port()}/v1")  # nothing listening
    assert code == 2, text
    assert "nothing is listening" in text
