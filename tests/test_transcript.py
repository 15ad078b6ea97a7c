"""Replay 95 real dog calls (recorded on a fresh 3-node cluster) against the fake dog.

Same order, empty store; rc, stdout and stderr must be identical after masking what varies
between runs (times, disk sizes: each step's ``vary`` regexes, applied to both sides).
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from tests.fakedog import control

pytestmark = pytest.mark.timeout(120)
STEPS = [
    json.loads(line)
    for line in (Path(__file__).parent / "data" / "transcript.jsonl").read_text().splitlines()
    if line.strip()
]


def mask(text: bytes, patterns: list[str]) -> str:
    s = text.decode("latin-1")
    for pattern in patterns:
        # DOTALL: an escaped newline inside a name (`\\` + LF) is part of the name too
        s = re.sub(
            pattern, lambda m: (m.group(1) if m.re.groups else "") + "<VARY>", s, flags=re.DOTALL
        )
    return s


def test_transcript_has_95_steps():
    assert len(STEPS) == 95


def test_replay_matches_real_dog(tmp_path):
    store = control.init_store(tmp_path / "store")
    mismatches = []
    for step in STEPS:
        argv = [a.encode("utf-8", "surrogateescape") for a in step["argv"]]
        stdin = base64.b64decode(step.get("stdin_b64") or "")
        got = control.run(store, *argv, stdin=stdin)
        vary = step.get("vary") or []
        want_out = mask(base64.b64decode(step["stdout_b64"]), vary)
        want_err = mask(step["stderr"].encode("utf-8", "surrogateescape"), vary)
        got_out, got_err = mask(got.stdout, vary), mask(got.stderr, vary)
        if (got.returncode, got_out, got_err) != (step["rc"], want_out, want_err):
            mismatches.append(
                f"step {step['step']} {step['argv']!r} ({step.get('note', '')}):\n"
                f"  rc {got.returncode} want {step['rc']}\n"
                f"  stdout {got_out[:300]!r}\n    want {want_out[:300]!r}\n"
                f"  stderr {got_err!r}\n    want {want_err!r}"
            )
    assert not mismatches, "\n".join(mismatches)
