"""`kubectl explain` tells a user each field's default and bounds: every defaulted or bounded
spec field's description ends with them, in one fixed form ("Default 10; 1-1000.").

String lengths are left out on purpose: they guard the API server, and "at most 253
characters" on every name would drown the bounds that matter.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from switchboard_testkit.cluster import Cluster
from switchboard_testkit.controlplane import wait_for

CRD = Path(__file__).resolve().parents[1] / "crds" / "platformconnections.switchboard.dev.yaml"


def _value(v: Any) -> str:
    return json.dumps(v).replace('"', "") if not isinstance(v, bool) else str(v).lower()


def expected_suffix(field: dict[str, Any]) -> str | None:
    """What the description of ``field`` must end with; None when it has nothing to say."""
    parts = []
    default = field.get("default")
    if default is not None and default != {}:
        parts.append(f"Default {_value(default)}")
    for low, high, unit in (("minimum", "maximum", ""), ("minItems", "maxItems", " entries")):
        lo, hi = field.get(low), field.get(high)
        if lo is not None and hi is not None:
            parts.append(f"{lo}-{hi}{unit}")
        elif hi is not None:
            parts.append(f"at most {hi}{unit}")
        elif lo is not None:
            parts.append(f"at least {lo}{unit}")
    if not parts:
        return None
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


def spec_fields(node: dict[str, Any], path: str = "spec") -> Iterator[tuple[str, dict[str, Any]]]:
    for name, child in (node.get("properties") or {}).items():
        yield f"{path}.{name}", child
        yield from spec_fields(child, f"{path}.{name}")
    if "items" in node:
        yield from spec_fields(node["items"], f"{path}[]")


def schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def test_every_defaulted_or_bounded_spec_field_says_so_last() -> None:
    missing = []
    checked = 0
    for path, field in spec_fields(schema()["properties"]["spec"]):
        want = expected_suffix(field)
        if want is None:
            continue
        checked += 1
        if not " ".join((field.get("description") or "").split()).endswith(want):
            missing.append(f"{path}: should end with {want!r}")
    assert checked >= 15, checked
    assert not missing, "\n".join(missing)


def test_kubectl_explain_prints_the_default_and_bounds(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s",
                    "crd/platformconnections.switchboard.dev")

    def explained() -> str | None:
        # The OpenAPI document is published a moment after the CRD is established (longer for
        # a larger schema): until then kubectl explain does not know the resource.
        done = cluster.kubectl("explain",
                               "platformconnections.spec.telegram.reconnect.maxAttempts",
                               check=False)
        return done.stdout if done.returncode == 0 else None

    out = wait_for(explained, 30, "kubectl explain to know the resource")
    assert isinstance(out, str)
    assert "Default 10; 1-10000." in " ".join(out.split()), out
