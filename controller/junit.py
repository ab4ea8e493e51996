"""junit.xml: one test case per gate and window, for CI systems that read JUnit reports.

A FAIL gate is a <failure>; an INCONCLUSIVE one an <error type="inconclusive"> (not enough
evidence is not a pass, and CI should not show it green); a run that could not judge any
gate yields a single errored case so the report is never empty.
"""
import xml.etree.ElementTree as ET

from loadgate.controller.gates import GateStatus


def render(verdict):
    """The JUnit XML text of a Verdict."""
    deployment = verdict.deployment["id"]
    suite = ET.Element("testsuite", name=f"loadgate readiness {deployment}")
    properties = ET.SubElement(suite, "properties")
    for key, value in (("verdict", verdict.status.value), ("marker", verdict.marker),
                       ("recommendation", verdict.recommendation)):
        ET.SubElement(properties, "property", name=key, value=value)
    failures = errors = 0
    cases = list(verdict.gates)
    for gate in cases:
        case = ET.SubElement(suite, "testcase", classname=f"loadgate.{gate.window}",
                             name=gate.name)
        text = (f"measured {gate.measured} {gate.unit}, threshold {gate.threshold} "
                f"{gate.unit}, samples {gate.samples}, window {gate.window}")
        if gate.status is GateStatus.FAIL:
            failures += 1
            ET.SubElement(case, "failure", message=gate.reason, type="FAIL").text = text
        elif gate.status is GateStatus.INCONCLUSIVE:
            errors += 1
            ET.SubElement(case, "error", message=gate.reason, type="inconclusive").text = text
        ET.SubElement(case, "system-out").text = gate.reason
    if not cases:
        errors += 1
        case = ET.SubElement(suite, "testcase", classname="loadgate.readiness",
                             name="readiness")
        ET.SubElement(case, "error", message="; ".join(verdict.reasons) or "no gate judged",
                      type=verdict.run_status)
    suite.set("tests", str(max(1, len(cases))))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    suite.set("skipped", "0")
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"
