"""Every command the docs print works when pasted: extracted from the docs and run (dry where it is long).

Sources: README.md, docs/*.md, and the comments of config/*.yaml and profiles/*/config.yaml. A command is a
line in a ```bash block, an inline `code span`, or a comment line, that starts with a known program. Each
is run from a rehearsal folder (``python -m geoens.demo.rehearsal --scale 20``: the real layouts at the paths
of config/paper.yaml, a ``my.yaml``, the workflow linked in), exactly as printed, with these dry-run rules:

* ``snakemake ...``: with ``-n`` appended; must exit 0.
* ``geoens validate ...``: run as printed; ``geoens search ...`` and ``geoens explore ...``: their arguments
  are parsed (a real search or explorer needs a finished run: tests/test_workflow.py and
  tests/test_explorer.py run one).
* ``make <target>``: ``make -n <target>`` in the checkout.
* ``python bench/<x>.py ...``, ``python tests/browser/<x>.py ...`` and ``python -m geoens.demo.rehearsal
  ...``: arguments parsed with ``--help`` appended (they run for minutes or need a run); the script must
  exist.
* ``... -m pytest <args>``: ``--collect-only`` (the tests named must exist).
* ``a && b``: each part by these rules, in order.
* ``cp SRC DST``: SRC must exist; ``bash <script>``: the script must exist; ``export``: skipped.

Blocks that only show what the tests themselves run are marked in the docs with the HTML comment
``<!-- run by tests/<file> -->`` on the line before the fence, and must name a test file that exists.
An unknown program fails the test, so a new kind of command gets a rule here.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from cluster.workflow import snakemake_env

REPO = Path(__file__).resolve().parents[1]
DOC_FILES = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]
YAML_FILES = [
    *sorted(str(p.relative_to(REPO)) for p in (REPO / "config").glob("*.yaml")),
    *sorted(str(p.relative_to(REPO)) for p in (REPO / "profiles").glob("*/config.yaml")),
]


@dataclass(frozen=True)
class DocCommand:
    """One command as printed, and where."""

    source: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.text}"


def _strip_comment(text: str) -> str:
    parts = shlex.shlex(text, posix=True, punctuation_chars=False)
    parts.whitespace_split = True
    parts.commenters = "#"
    return shlex.join(list(parts)) if "#" in text else text.strip()


def extract_markdown(path: str) -> list[DocCommand]:
    """Commands in ```bash blocks (continuation lines joined) and in inline code spans."""
    lines = (REPO / path).read_text(encoding="utf-8").splitlines()
    out: list[DocCommand] = []
    in_block, skip_block, pending, start = False, False, "", 0
    for no, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            if not in_block:
                in_block = stripped in ("```bash", "```sh", "```console")
                prev = lines[no - 2].strip() if no >= 2 else ""
                m = re.fullmatch(r"<!-- run by (tests/\S+\.py) -->", prev)
                skip_block = bool(m)
                if m:
                    assert (REPO / m.group(1)).is_file(), f"{path}:{no - 1}: {m.group(1)} does not exist"
                if not in_block and stripped != "```":
                    in_block = False
                continue
            in_block = False
            continue
        if in_block:
            if skip_block or not stripped or stripped.startswith("#"):
                continue
            if not pending:
                start = no
            pending += " " + stripped.rstrip("\\").strip()
            if not stripped.endswith("\\"):
                out.append(DocCommand(path, start, _strip_comment(pending.strip())))
                pending = ""
            continue
        for span in re.findall(r"`([^`]+)`", line):
            if re.fullmatch(r"geoens \w+( --[\w-]+)?", span.strip()):
                continue  # a subcommand (or one of its options) named in prose, not a command line
            if span.startswith(
                ("snakemake ", "geoens ", "make ", "python -m geoens", "python bench/", ".venv/bin/")
            ):
                out.append(DocCommand(path, no, span.strip()))
    return out


def extract_yaml_comments(path: str) -> list[DocCommand]:
    """Commands in comment lines: ``#   snakemake ...`` or ``# ... (cp config/paper.yaml my.yaml) ...``."""
    out: list[DocCommand] = []
    for no, line in enumerate((REPO / path).read_text(encoding="utf-8").splitlines(), 1):
        m = re.match(r"\s*#\s+(snakemake .+|geoens .+|python .+)$", line)
        if m:
            out.append(DocCommand(path, no, m.group(1).strip()))
        for span in re.findall(r"\((cp [^)]+)\)", line):
            out.append(DocCommand(path, no, span))
    return out


def all_commands() -> list[DocCommand]:
    cmds = [c for f in DOC_FILES for c in extract_markdown(f)]
    cmds += [c for f in YAML_FILES for c in extract_yaml_comments(f)]
    return cmds


def run_dry(cmd: DocCommand, rehearsal: Path) -> tuple[int, str]:
    """Run one documented command by the rules of the module docstring; return (exit status, output).

    A chain ``a && b`` is run part by part, as a shell would: the first part that fails is the answer.
    """
    argv = shlex.split(cmd.text)
    if "&&" in argv:  # an unquoted `&&` (inside quotes it stays part of its word)
        out, part = "", []
        for word in [*argv, "&&"]:
            if word != "&&":
                part.append(word)
                continue
            code, text = run_dry(DocCommand(cmd.source, cmd.line, shlex.join(part)), rehearsal)
            out, part = out + text, []
            if code:
                return code, out
        return 0, out
    env = snakemake_env()
    while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):  # leading VAR=value assignments
        key, value = argv.pop(0).split("=", 1)
        env[key] = value
    prog = argv[0]
    bindir = Path(sys.executable).parent
    if prog.startswith(".venv/bin/"):
        prog = str(bindir / Path(prog).name)
    if prog == "export":
        return 0, "skipped"
    if prog == "cp":
        return (0, "") if (REPO / argv[1]).exists() else (1, f"{argv[1]} not found")
    if prog == "bash":
        return (0, "") if (REPO / argv[1]).is_file() else (1, f"{argv[1]} not found")
    if prog == "make":
        run = [prog, "-n", *argv[1:]]
        cwd = REPO
    elif Path(prog).name == "snakemake" or argv[1:3] == ["-m", "snakemake"]:
        base = (
            [str(bindir / "snakemake")]
            if Path(prog).name == "snakemake"
            else [sys.executable, "-m", "snakemake"]
        )
        run = [*base, *argv[1 if Path(prog).name == "snakemake" else 3 :], "-n"]
        cwd = rehearsal
    elif Path(prog).name == "geoens" and argv[1] in ("search", "explore"):
        from geoens.apps.cli import build_parser

        try:
            build_parser().parse_args(argv[1:])
        except SystemExit as exc:
            return int(exc.code or 2), f"geoens {argv[1]}: the arguments do not parse"
        return 0, "parsed"
    elif Path(prog).name == "geoens":
        run, cwd = [str(bindir / "geoens"), *argv[1:]], rehearsal
    elif Path(prog).name.startswith("python") and "pytest" in argv:
        run, cwd = [sys.executable, *argv[1:], "--collect-only", "-q"], REPO
    elif Path(prog).name.startswith("python") and (
        argv[1].startswith(("bench/", "tests/browser/"))
        or (argv[1] == "-m" and argv[2].startswith("geoens."))
    ):
        run, cwd = [sys.executable, *argv[1:], "--help"], REPO
    else:
        return 1, f"no rule for this kind of command: {cmd.text}"
    proc = subprocess.run(run, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout[-2000:] + proc.stderr[-4000:]


def test_the_docs_print_the_commands_users_need() -> None:
    texts = [c.text for c in all_commands()]
    from geoens.demo.rehearsal import PAPER_COMMAND

    assert PAPER_COMMAND in texts, "README must print the real-data command the rehearsal runs"
    assert any(t.startswith("snakemake --profile profiles/slurm") for t in texts)
    assert any(t.startswith("geoens validate") for t in texts)
    assert len(texts) >= 15


@pytest.mark.slow
def test_every_documented_command_runs(rehearsal: Path) -> None:
    failures = []
    for cmd in all_commands():
        rc, output = run_dry(cmd, rehearsal)
        if rc != 0:
            failures.append(f"{cmd}\n  -> exit {rc}: {output.strip()[-1500:]}")
    assert not failures, "documented commands that fail when pasted:\n" + "\n".join(failures)


@pytest.mark.slow
def test_a_broken_command_is_caught(rehearsal: Path) -> None:
    """The old form (`--configfile X target`) fails: the check is not vacuous."""
    bad = DocCommand("x", 1, "snakemake --cores 32 --configfile my.yaml results/figures/rva.pdf")
    rc, output = run_dry(bad, rehearsal)
    assert rc != 0 and "rva.pdf" in output
    assert run_dry(DocCommand("x", 1, "frobnicate --now"), rehearsal)[0] != 0


def test_a_chain_is_run_part_by_part(tmp_path: Path) -> None:
    """`make clean && make demo` is two make calls; a broken second part fails the chain."""
    assert run_dry(DocCommand("x", 1, "make clean && make demo"), tmp_path)[0] == 0
    rc, output = run_dry(DocCommand("x", 1, "make clean && make no-such-target"), tmp_path)
    assert rc != 0 and "no-such-target" in output
    # a quoted `&&` belongs to its word: one command (here one unknown program), not two
    rc, output = run_dry(DocCommand("x", 1, "frobnicate 'a && make demo'"), tmp_path)
    assert rc != 0 and "no rule for this kind of command" in output
