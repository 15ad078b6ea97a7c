"""sheepfs(8): made from the option table ``--help`` prints, so every option and its help
are in it word for word; groff reads it without a warning; and after scripts/setup
``man sheepfs`` shows this very page."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess

import pytest

from sheepfs import manpage
from sheepfs.options import _O_OPTIONS, build_parser
from sheepfs.statuscmd import build_parser as build_status_parser

INSTALLED = "/usr/local/share/man/man8/sheepfs.8"


def plain(troff: str) -> str:
    """The page as man shows it, without line breaks, hyphenation or justification."""
    if shutil.which("groff") is None:
        pytest.fail("groff is missing: scripts/setup installs man-db, which brings it")
    r = subprocess.run(
        ["groff", "-man", "-Tascii", "-P-cbou", "-rLL=2000n", "-rHY=0"],
        input=troff,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "LC_ALL": "C"},
    )
    return re.sub(r"\s+", " ", r.stdout)


def _words(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def test_every_option_is_in_the_page_with_its_help() -> None:
    page = plain(manpage.render())
    formatter = argparse.HelpFormatter("sheepfs")
    for parser in (build_parser(), build_status_parser()):
        for action in parser._actions:
            if action.help is argparse.SUPPRESS or not action.option_strings:
                continue
            assert ", ".join(action.option_strings) in page, action.option_strings
            assert _words(formatter._expand_help(action)) in page, action.option_strings


def test_every_o_form_is_in_the_page() -> None:
    page = plain(manpage.render())
    for key in _O_OPTIONS:
        assert re.search(rf"\b{key}\b(=\S+)? as --", page), key


def test_help_shows_what_the_page_shows() -> None:
    """The two are one table: the help of --metrics (say) reads the same in both."""
    help_text = _words(build_parser().format_help())
    page = plain(manpage.render())
    for line in ("--metrics ADDR:PORT", "Prometheus' text format", "-o OPTS", "metrics="):
        assert line in help_text and line in page, line


def test_groff_reads_the_page_without_a_warning() -> None:
    if shutil.which("groff") is None:
        pytest.fail("groff is missing: scripts/setup installs man-db, which brings it")
    r = subprocess.run(["groff", "-man", "-ww", "-z", "-Tutf8"], input=manpage.render(),
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 0 and r.stderr == ""


def test_a_line_starting_with_a_dot_is_not_a_request() -> None:
    assert manpage.escape(".snapshots\n'x\na-b\\c") == "\\&.snapshots\n\\&'x\na\\-b\\ec"


def test_man_sheepfs_shows_this_page_after_setup() -> None:
    if os.geteuid() != 0:
        pytest.skip("scripts/setup installs the man page only as root")
    if not os.path.exists(INSTALLED):
        pytest.fail(f"{INSTALLED} is missing: scripts/setup installs it")
    with open(INSTALLED) as f:
        assert f.read() == manpage.render(), "the installed page is stale: run scripts/setup"
    r = subprocess.run(["man", "-w", "sheepfs"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and os.path.realpath(r.stdout.strip()) == os.path.realpath(INSTALLED)
    env = {**os.environ, "MANWIDTH": "100", "LC_ALL": "C"}
    r = subprocess.run(["man", "-P", "cat", "sheepfs"], capture_output=True, text=True,
                       timeout=60, env=env)  # fmt: skip
    assert r.returncode == 0 and "sheepfs status" in r.stdout and "--metrics" in r.stdout
