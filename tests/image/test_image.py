"""The image `make image` builds (hack/build-image.sh, no Docker) against the Dockerfile: the same
user, entry points, environment, Python and installed packages, and the entry points run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
import tomllib
from pathlib import Path
from typing import Any

import pytest

from switchboard_gateway.main import EX_CONFIG
from switchboard_testkit.binaries import REPO
from switchboard_testkit.realnode import build_images

DOCKERFILE = (REPO / "Dockerfile").read_text()


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The OCI archive unpacked: its reference, image config and root filesystem."""
    ref, archive = build_images()["switchboard"]
    root = tmp_path_factory.mktemp("image")
    layout = root / "layout"
    with tarfile.open(archive) as tar:
        tar.extractall(layout, filter="tar")
    index = json.loads((layout / "index.json").read_text())
    blob = lambda digest: layout / "blobs" / "sha256" / digest.split(":", 1)[1]  # noqa: E731
    manifest = json.loads(blob(index["manifests"][0]["digest"]).read_text())
    config = json.loads(blob(manifest["config"]["digest"]).read_text())
    rootfs = root / "rootfs"
    for layer in manifest["layers"]:
        with tarfile.open(blob(layer["digest"])) as tar:
            tar.extractall(rootfs, filter="tar")
    return {"ref": ref, "tag": index["manifests"][0]["annotations"][
        "org.opencontainers.image.ref.name"], "config": config, "rootfs": rootfs,
        "archive": archive}


def dockerfile_json(instruction: str) -> list[str]:
    match = re.search(rf"^{instruction} (\[.*\])$", DOCKERFILE, re.M)
    assert match, f"no {instruction} in the Dockerfile"
    return json.loads(match.group(1))


def test_tag_is_the_chart_default(image: dict[str, Any]) -> None:
    chart = (REPO / "helm/switchboard/Chart.yaml").read_text()
    app_version = re.search(r'^appVersion: "(.*)"', chart, re.M)
    values = (REPO / "helm/switchboard/values.yaml").read_text()
    repository = re.search(r"^  repository: (\S+)", values, re.M)
    assert app_version and repository
    assert image["ref"] == f"{repository.group(1)}:{app_version.group(1)}"
    assert image["tag"] == app_version.group(1)


def test_user_and_command_match_the_dockerfile(image: dict[str, Any]) -> None:
    cfg = image["config"]["config"]
    user = re.search(r"^USER (\S+)$", DOCKERFILE, re.M)
    assert user and cfg["User"] == user.group(1) == "65532:65532"
    assert cfg["Cmd"] == dockerfile_json("CMD")
    env = dict(e.split("=", 1) for e in cfg["Env"])
    env_line = re.search(r"^ENV (.*)$", DOCKERFILE, re.M)
    assert env_line
    for item in env_line.group(1).split():
        key, value = item.split("=", 1)
        if key == "PATH":
            assert env["PATH"].startswith(value.replace(":$PATH", ":"))
        else:
            assert env[key] == value
    passwd = (image["rootfs"] / "etc/passwd").read_text()
    assert re.search(r"^switchboard:x:65532:65532:", passwd, re.M)
    assert "--uid 65532 --gid 65532" in DOCKERFILE and "useradd" in DOCKERFILE


def test_python_is_the_dockerfiles_minor(image: dict[str, Any]) -> None:
    base = re.search(r"^ARG PYTHON_IMAGE=python:(\d+\.\d+)\.", DOCKERFILE, re.M)
    assert base
    venv = (image["rootfs"] / "opt/switchboard/pyvenv.cfg").read_text()
    assert re.search(rf"^version = {re.escape(base.group(1))}\.", venv, re.M), venv


def installed(rootfs: Path) -> dict[str, Path]:
    site = next((rootfs / "opt/switchboard/lib").glob("python3.*/site-packages"))
    return {re.sub(r"[-_.]+", "-", d.name.split("-")[0]).lower(): d
            for d in site.glob("*.dist-info")}


def test_installed_packages_are_the_projects_and_no_test_kit(image: dict[str, Any]) -> None:
    dists = installed(image["rootfs"])
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "switchboard" in dists
    for requirement in project["dependencies"]:
        name = re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[ ]", requirement)[0]).lower()
        assert name in dists, f"{name} is not installed in the image"
    # What the Dockerfile installs (`pip install .`) leaves these out as well.
    for absent in ("switchboard-testkit", "pytest", "qq-botpy", "mypy", "ruff"):
        assert absent not in dists
    site = next((image["rootfs"] / "opt/switchboard/lib").glob("python3.*/site-packages"))
    assert not (site / "switchboard_testkit").exists()
    assert not (site / "operator").exists()  # `operator` is the standard library's


@pytest.mark.parametrize(("entry_point", "rc", "says"), [
    ("switchboard-operator", 0, "usage:"),  # --help
    # The gateway is configured by its Deployment's environment only: without it, it says so.
    ("switchboard-gateway", EX_CONFIG, "SWITCHBOARD_CONNECTION is required"),
])
def test_entry_points_run_as_65532(image: dict[str, Any], entry_point: str, rc: int,
                                   says: str) -> None:
    """Both console scripts of the Dockerfile's image start in this one, as the image's user."""
    assert (image["rootfs"] / "opt/switchboard/bin" / entry_point).is_file()
    done = subprocess.run(
        [shutil.which("chroot") or "/usr/sbin/chroot", "--userspec=65532:65532",
         str(image["rootfs"]), f"/opt/switchboard/bin/{entry_point}", "--help"],
        capture_output=True, text=True, timeout=60,
        env={"PATH": "/opt/switchboard/bin:/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"})
    assert done.returncode == rc, done.stderr
    assert says in done.stdout + done.stderr
