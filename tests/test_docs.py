"""docs/math.md, the mathematical reference the code cites, stays in step with the code.

* Every citation in the Python sources (`docs/math.md §2-4`, and the older form `MATH.md 8.10`) names sections that
  are headings of docs/math.md. Ranges ("2-4", "8.10-8.12") are expanded; lists ("3, 4", "4, E.12") are split.
* The Markdown files that refer to docs/math.md by section (README.md, benchmarks/*.md, docs/math.md itself) do too.
* Every function docs/math.md names ("**Implemented by:**" paragraphs, and any backticked dotted name of a project
  package) can be imported, and every test it names (`tests/file.py::test_name`) is defined in that file.

Heading format (stated at the top of docs/math.md): `## §<id> <title>` or `### §<id> <title>`, the id being the text
between "§" and the first space, e.g. "2", "8.10", "E.11".
"""

from __future__ import annotations

import importlib
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "math.md"
THIS = pathlib.Path(__file__).resolve()

HEADING = re.compile(r"^#{1,6}[ \t]+§(\S+)[ \t]", re.MULTILINE)
SECTION_ID = re.compile(r"(?:E\.\d+|\d+(?:\.\d+)?)")

_SECTION = r"(?:E\.\d+|\d+(?:\.\d+)?)"
_ITEM = rf"{_SECTION}(?:[ \t]*-[ \t]*{_SECTION})?"
_LIST = rf"{_ITEM}(?:\s*(?:,|/|\band\b)\s*§?{_ITEM})*"
_PART = r"(?:[ \t]*\((?P<part>E\.\d+)\))?"  # "MATH.md 4 (E.11)": a lettered part in brackets
# A code citation: "docs/math.md §<list>" (the § may follow a line break) or the older "MATH.md <list>".
CITATION = re.compile(rf"(?:docs/math\.md\s*§|MATH\.md\s+)(?P<list>{_LIST}){_PART}")
# A bare reference "§<list>" in Markdown that cites docs/math.md.
SECTION_REF = re.compile(rf"§(?P<list>{_LIST}){_PART}")

TEST_REF = re.compile(r"((?:tests|benchmarks)/[\w/]+\.py)::(\w+)")
BACKTICKED = re.compile(r"`([^`\n]+)`")
DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")


def package_dirs() -> list[pathlib.Path]:
    """Top-level Python packages of the repository (a directory with __init__.py), tests included."""
    return sorted(p for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").is_file())


def source_files() -> list[pathlib.Path]:
    """The Python files whose citations are checked: the packages (this file excepted) and top-level scripts."""
    files = [f for d in package_dirs() for f in sorted(d.rglob("*.py"))]
    files += sorted(ROOT.glob("*.py"))  # run.py (and setup.py)
    return [f for f in files if f.resolve() != THIS]


def markdown_files() -> list[pathlib.Path]:
    """Markdown that cites docs/math.md by section with a bare "§": README.md, benchmarks/*.md, docs/math.md."""
    return [f for f in [ROOT / "README.md", *sorted((ROOT / "benchmarks").glob("*.md")), DOC] if f.is_file()]


def headings() -> list[str]:
    return HEADING.findall(DOC.read_text(encoding="utf-8"))


def expand(item: str) -> list[str]:
    """'2-4' -> 2, 3, 4; '8.10-8.12' -> 8.10, 8.11, 8.12; 'E.8-E.10' -> E.8, E.9, E.10; '5.1' -> 5.1."""
    if "-" not in item:
        return [item.strip()]
    low, high = (s.strip() for s in item.split("-"))
    low_major, _, low_minor = low.rpartition(".")
    high_major, _, high_minor = high.rpartition(".")
    if low_major != high_major:  # e.g. '1.4-2': only the end points can be checked
        return [low, high]
    first, last = int(low_minor), int(high_minor)
    if first > last:
        raise ValueError(f"reversed range {item!r}")
    prefix = f"{low_major}." if low_major else ""
    return [f"{prefix}{i}" for i in range(first, last + 1)]


def cited_sections(match: re.Match) -> list[str]:
    items = re.split(r"\s*(?:,|/|\band\b)\s*§?", match.group("list"))
    sections = [s for item in items for s in expand(item)]
    return sections + ([match.group("part")] if match.group("part") else [])


def line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def unresolved(pattern: re.Pattern, files: list[pathlib.Path], known: set[str]) -> tuple[list[str], int]:
    """(messages naming each citation with a missing section, number of sections checked)."""
    problems, checked = [], 0
    for path in files:
        text = path.read_text(encoding="utf-8")
        for match in pattern.finditer(text):
            where = f"{path.relative_to(ROOT)}:{line_of(text, match.start())}"
            cited = " ".join(match.group(0).split())
            try:
                sections = cited_sections(match)
            except ValueError as err:
                problems.append(f"{where}: {cited!r}: {err}")
                continue
            for section in sections:
                checked += 1
                if section not in known:
                    problems.append(f"{where}: {cited!r} cites §{section}, which is not a heading of docs/math.md")
    return problems, checked


def test_headings_are_well_formed_and_unique():
    ids = headings()
    assert ids, "docs/math.md has no '## §<id> <title>' headings"
    bad = [i for i in ids if not SECTION_ID.fullmatch(i)]
    assert not bad, f"docs/math.md headings with a malformed section id: {bad}"
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    assert not repeated, f"docs/math.md has more than one heading for section(s) {repeated}"


def test_every_citation_in_the_code_resolves_to_a_heading():
    problems, checked = unresolved(CITATION, source_files(), set(headings()))
    assert checked > 0, "no citation of docs/math.md found in the code: has the citation form changed?"
    assert not problems, "\n".join(problems)


def test_section_references_in_markdown_resolve():
    problems, _ = unresolved(SECTION_REF, markdown_files(), set(headings()))
    assert not problems, "\n".join(problems)


def resolve(name: str) -> str | None:
    """None if the dotted `name` is importable (a module, then attributes), else why it is not."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        module_name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            missing = err.name or ""
            if missing == module_name or module_name.startswith(missing + "."):
                continue  # this prefix is not a module: try a shorter one
            return f"importing {module_name} fails: {err}"
        for j, attr in enumerate(parts[i:], start=i):
            if not hasattr(obj, attr):
                return f"{'.'.join(parts[:j])} has no attribute {attr!r}"
            obj = getattr(obj, attr)
        return None
    return f"no module {parts[0]!r}"


def paragraphs(text: str) -> list[tuple[int, str]]:
    """(first line number, text) of each blank-line-separated paragraph."""
    out, start = [], 0
    for block in re.split(r"\n[ \t]*\n", text):
        out.append((line_of(text, text.index(block, start)), block))
        start = text.index(block, start) + len(block)
    return out


def named_functions() -> list[tuple[int, str]]:
    """(line, name): every backticked token of an "Implemented by" paragraph, and every backticked dotted name whose
    first component is a project package anywhere in docs/math.md."""
    text = DOC.read_text(encoding="utf-8")
    packages = {p.name for p in package_dirs()}
    names = []
    for line, block in paragraphs(text):
        implemented = block.lstrip().startswith("**Implemented by:**")
        for match in BACKTICKED.finditer(block):
            token = match.group(1)
            if implemented or (DOTTED.fullmatch(token) and token.split(".")[0] in packages):
                names.append((line + block.count("\n", 0, match.start()), token))
    return names


def test_named_functions_exist():
    names = named_functions()
    assert names, "docs/math.md names no function in an '**Implemented by:**' paragraph"
    problems = []
    for line, name in names:
        if not DOTTED.fullmatch(name):
            problems.append(f"docs/math.md:{line}: {name!r} is not a dotted name (package.module.function)")
        elif (why := resolve(name)) is not None:
            problems.append(f"docs/math.md:{line}: {name}: {why}")
    assert not problems, "\n".join(problems)


def test_named_tests_exist():
    text = DOC.read_text(encoding="utf-8")
    refs = [(line_of(text, m.start()), m.group(1), m.group(2)) for m in TEST_REF.finditer(text)]
    assert refs, "docs/math.md names no test (tests/file.py::test_name)"
    problems = []
    for line, path, name in refs:
        file = ROOT / path
        if not file.is_file():
            problems.append(f"docs/math.md:{line}: {path} does not exist (named with ::{name})")
        elif not re.search(rf"^\s*(?:async\s+)?def {re.escape(name)}\(", file.read_text(encoding="utf-8"), re.M):
            problems.append(f"docs/math.md:{line}: {path} defines no {name}")
    assert not problems, "\n".join(problems)
