"""The documentation under docs/ is current and its links resolve."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

_spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
gen_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen_reference)

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _prose(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code spans removed."""
    lines, fence = [], None
    for line in text.splitlines():
        m = re.match(r"^\s*(`{3,}|~{3,})", line)
        if m:
            mark = m.group(1)
            if fence is None:
                fence = mark
            elif mark[0] == fence[0] and len(mark) >= len(fence):
                fence = None
            continue
        if fence is None:
            lines.append(re.sub(r"(`+)(?:(?!\1).)+?\1", "", line))
    return lines


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a markdown file (gen_reference.Slugger, the same rule)."""
    slugger = gen_reference.Slugger()
    out = set()
    fence = None
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\s*(`{3,}|~{3,})", line)
        if m:
            mark = m.group(1)
            if fence is None:
                fence = mark
            elif mark[0] == fence[0] and len(mark) >= len(fence):
                fence = None
            continue
        if fence is None and re.match(r"^#{1,6} ", line):
            out.add(slugger(line))
    return out


def test_reference_pages_are_current():
    """``python docs/gen_reference.py --check`` passes: commands.md and api.md match the code."""
    res = subprocess.run([sys.executable, str(DOCS / "gen_reference.py"), "--check"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_subcommand_is_documented():
    from invivo.cli.main import build_parser

    names = list(gen_reference._subparsers(build_parser()))
    assert "run" in names and "demo" in names
    text = (DOCS / "commands.md").read_text(encoding="utf-8")
    headings = set(re.findall(r"^## (.+)$", text, flags=re.M))
    missing = [n for n in names if f"invivo {n}" not in headings]
    assert not missing, f"docs/commands.md lacks {missing}: run python docs/gen_reference.py"


def test_check_names_a_stale_file(tmp_path, monkeypatch, capsys):
    """--check exits 1 and names the file that would change (here api.md, made stale)."""
    api = tmp_path / "api.md"
    api.write_text("stale\n", encoding="utf-8")
    monkeypatch.setattr(gen_reference, "outputs", lambda **kw: {api: "fresh\n"})
    monkeypatch.setattr(gen_reference, "ROOT", tmp_path)
    assert gen_reference.main(["--check"]) == 1
    assert api.read_text(encoding="utf-8") == "stale\n"
    assert "api.md is stale" in capsys.readouterr().err


def test_relative_links_resolve():
    pages = sorted(DOCS.glob("*.md"))
    assert {"index.md", "installation.md", "concepts.md", "commands.md", "api.md", "study.md",
            "architecture.md"} <= {p.name for p in pages}
    anchors: dict[Path, set[str]] = {}
    bad = []
    for page in pages:
        for line in _prose(page.read_text(encoding="utf-8")):
            for target in _LINK.findall(line):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I):  # http:, https:, mailto:
                    continue
                path_part, _, frag = target.partition("#")
                dest = (page.parent / path_part).resolve() if path_part else page
                if not dest.exists():
                    bad.append(f"{page.name}: {target} (no such file)")
                    continue
                if frag and dest.suffix == ".md":
                    if dest not in anchors:
                        anchors[dest] = _anchors(dest)
                    if frag not in anchors[dest]:
                        bad.append(f"{page.name}: {target} (no such heading)")
    assert not bad, "broken links:\n" + "\n".join(bad)


@pytest.mark.parametrize("text, expected", [
    ("## `invivo.kinetics.Frames`", "invivokineticsframes"),
    ("## invivo kinetics-map", "invivo-kinetics-map"),
    ("### Errors and exit codes", "errors-and-exit-codes"),
    ("#### `invivo.__version__`", "invivo__version__"),
])
def test_anchor_rule(text, expected):
    assert gen_reference.slug(text) == expected
