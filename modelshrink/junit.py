"""The gates of a run as JUnit XML, the format CI systems (GitHub Actions reporters, GitLab, Jenkins)
show natively: one test suite per run, one test case per constraint, a <failure> for each that failed.
Names from the recipe or a report pass through `escape.xml`: one control character in a gate's or the
recipe's name would make the whole file ill-formed, and CI would drop every result in it."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from modelshrink import escape
from modelshrink.constraints import verdict


def junit_xml(report: dict[str, Any]) -> bytes:
    gates = report["constraints"]
    failures = [g for g in gates if not g["passed"]]
    name = escape.xml(f"modelshrink: {report['recipe'].get('name') or report.get('recipe_source') or 'run'}")
    suites = ET.Element("testsuites", name="modelshrink", tests=str(len(gates)), failures=str(len(failures)))
    suite = ET.SubElement(suites, "testsuite", name=name, tests=str(len(gates)), failures=str(len(failures)),
                          errors="0", skipped="0")  # fmt: skip
    for gate in gates:
        gate_name, said = escape.xml(gate["name"]), escape.xml(verdict(gate))
        case = ET.SubElement(suite, "testcase", classname="modelshrink.constraints", name=gate_name, time="0")
        if gate["passed"]:
            ET.SubElement(case, "system-out").text = said
        else:
            ET.SubElement(case, "failure", message=said, type="gate")
    return ET.tostring(suites, encoding="utf-8", xml_declaration=True) + b"\n"
