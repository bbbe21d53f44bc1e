"""The gpu tests' outcome (:class:`GpuTestReport`) from pytest's junit XML, and a junit
XML rebuilt from pytest's ``-v`` log for a run killed before pytest wrote its own."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from .problems import last_error_line

OUTCOME_LINE = (
    re.compile(r"^\[gw\d+\] \[\s*\d+%\] (?P<outcome>[A-Z]+) (?P<id>\S+::\S+)"),  # pytest-xdist
    re.compile(r"^(?P<id>\S+::\S+) (?P<outcome>[A-Z]+)\b"),  # plain pytest -v
)
"""pytest ``-v`` lines naming a test and its outcome (for a junit rebuilt from the log)."""
LOG_OUTCOMES = {
    "PASSED": None,
    "XPASS": None,
    "FAILED": "failure",
    "ERROR": "error",
    "SKIPPED": "skipped",
    "XFAIL": "skipped",
}
"""pytest's outcome word -> the junit tag it becomes (None: passed)."""


@dataclass
class GpuTestReport:
    """The gpu tests' outcome, from the junit XML (or one rebuilt from the log)."""

    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    failures: list[list[str]] = field(default_factory=list)
    """``[test id, first line of the message]`` of each failed or erring test."""
    skip_reasons: dict[str, int] = field(default_factory=dict)
    uncollected: list[list[str]] = field(default_factory=list)
    """``[module, its error]`` of each test module pytest could not import."""
    planned: int | None = None
    returncode: int | None = None
    deadline_hit: bool = False
    junit: str = "none"
    """``pytest`` (written by pytest), ``rebuilt from the log``, or ``none``."""
    cuda_errors: list[str] = field(default_factory=list)
    timeouts: int = 0
    command: str = ""
    seconds: float = 0.0
    error_tail: str = ""
    """The log's last error line (for an abnormal pytest exit)."""
    slowest: list[str] = field(default_factory=list)
    """pytest's ``--durations`` lines: what to size the next budget on."""

    @property
    def total(self) -> int:
        """Tests that ran (or were skipped): not the modules that failed to collect."""
        return self.passed + self.failed + self.errors + self.skipped


def junit_test_id(classname: str, name: str) -> str:
    """``tests.test_x.TestC`` + ``test_y[a]`` -> ``tests/test_x.py::TestC::test_y[a]``
    (the module is the dotted prefix up to the first part named ``test_*`` or ``*_test``)."""
    parts = classname.split(".") if classname else []
    is_module = [p.startswith("test_") or p.endswith("_test") for p in parts]
    cut = is_module.index(True) + 1 if True in is_module else len(parts)
    module = "/".join(parts[:cut]) + ".py" if parts[:cut] else ""
    return "::".join(p for p in (module, *parts[cut:], name) if p)


def parse_junit(path: Path) -> GpuTestReport:
    """Counts, failing ids, modules that failed to collect, and skip reasons of a pytest
    junit XML file. Test cases without a name (placeholders of tests interrupted by
    SIGINT) are not counted."""
    report = GpuTestReport()
    for case in ET.parse(path).getroot().iter("testcase"):
        name = case.get("name")
        if not name:
            continue
        tags = {child.tag: child for child in case}
        outcome = next((t for t in ("failure", "error", "skipped") if t in tags), None)
        if outcome is None:
            report.passed += 1
            continue
        message = (tags[outcome].get("message") or tags[outcome].text or "").strip()
        first = message.splitlines()[0][:300] if message else ""
        if outcome == "error" and first == "collection failure":
            why = last_error_line(tags[outcome].text or "") or first
            module = junit_test_id(name, "")  # pytest names the module, dotted
            report.uncollected.append([module, why])
        elif outcome == "skipped":
            report.skipped += 1
            reason = first or "no reason given"
            report.skip_reasons[reason] = report.skip_reasons.get(reason, 0) + 1
        else:
            report.failed += outcome == "failure"
            report.errors += outcome == "error"
            report.failures.append([junit_test_id(case.get("classname", ""), name), first])
    return report


def outcomes_from_log(text: str) -> dict[str, str]:
    """Test id -> pytest's outcome word (``PASSED``, ``FAILED``, ...) from ``-v`` lines."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        for pattern in OUTCOME_LINE:
            match = pattern.match(line)
            if match and match.group("outcome") in LOG_OUTCOMES:
                found[match.group("id")] = match.group("outcome")
                break
    return found


def write_junit_from_log(text: str, path: Path) -> None:
    """Write a junit XML file with the outcomes named in a pytest ``-v`` log (for a run
    that was killed before pytest wrote its own); messages are not in the log."""
    suite = ET.Element("testsuite", name="rebuilt from the pytest log by gpu_session")
    for tid, outcome in outcomes_from_log(text).items():
        module, _, name = tid.partition("::")
        classname = module.removesuffix(".py").replace("/", ".")
        case = ET.SubElement(suite, "testcase", classname=classname, name=name)
        tag = LOG_OUTCOMES[outcome]
        if tag is not None:
            ET.SubElement(case, tag, message=f"{outcome} (the message is only in the log)")
    root = ET.Element("testsuites")
    root.append(suite)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
