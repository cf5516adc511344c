"""The README and the shipped config speak to users: no internal references
(seed numbers, issue numbers, a workspace path that a clone does not have),
and the sample summary the README shows is what `run` prints, adding up."""

from __future__ import annotations

import re

import pytest

from tests.conftest import ROOT, run_cli

INTERNAL = re.compile(r"seed 0\d\d|seed's|\bseeds?\b(?! \d)|issue \d+|shared/seeds", re.I)
USER_FACING = ["README.md", "config/local.toml", "config/aws.toml", "deploy/rivulet.service",
               "deploy/rivulet.env.example"]


@pytest.mark.parametrize("name", USER_FACING)
def test_no_internal_references(name):
    text = (ROOT / name).read_text()
    # `--seed N` is the random source's option, not a reference.
    found = [m.group(0) for m in INTERNAL.finditer(text.replace("--seed", "--SEED_OPTION"))]
    assert not found, f"{name}: {found}"


def test_the_readme_sample_summary_is_what_run_prints_and_adds_up(tmp_path):
    readme = (ROOT / "README.md").read_text()
    shown = re.search(r"```\n(records read .*?)```", readme, re.S).group(1).splitlines()
    result = run_cli("run", "--input", str(ROOT / "samples" / "events_sample.csv"), "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    printed = result.stdout.splitlines()

    def comparable(lines):  # timings and paths differ from run to run
        return [re.sub(r"\s+", " ", line) for line in lines
                if not line.startswith(("seconds", "records/s", "dead letters in"))]

    assert comparable(shown) == comparable(printed)
    numbers = {line.strip().rsplit(None, 1)[0]: int(line.rsplit(None, 1)[1].replace(",", ""))
               for line in printed if re.search(r"\s\d[\d,]*$", line) and not line.startswith("records/s")}
    assert numbers["records read"] == (numbers["blank lines skipped"] + numbers["valid (counted)"]
                                       + numbers["duplicates"] + numbers["dead-lettered"])
    assert numbers["dead-lettered"] == numbers["malformed"] + numbers["late"] + numbers["future"]
    reasons = re.search(r"dead letters by reason: (.*)", result.stdout).group(1)
    assert sum(int(part.split("=")[1]) for part in reasons.split(", ")) == numbers["dead-lettered"]
    assert "late=6" in reasons
