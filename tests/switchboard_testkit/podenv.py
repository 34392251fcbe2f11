"""Resolve a container's environment the way the kubelet does (env, envFrom, valueFrom, $(VAR))."""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException


class ConfigError(Exception):
    """The kubelet's CreateContainerConfigError: a referenced Secret/ConfigMap key is missing."""


_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: known names are replaced, $$ escapes, unknown stay as is."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env.get(name, m.group(0))

    return _REF.sub(sub, value)


class EnvResolver:
    """Looks up Secrets and ConfigMaps in the pod's namespace (with the node's credentials)."""

    def __init__(self, core: client.CoreV1Api, pod: dict[str, Any]) -> None:
        self.core = core
        self.pod = pod
        self.namespace = pod["metadata"]["namespace"]
        self._cache: dict[tuple[str, str], dict[str, str] | None] = {}

    def _data(self, kind: str, name: str) -> dict[str, str] | None:
        key = (kind, name)
        if key not in self._cache:
            try:
                if kind == "secret":
                    obj = self.core.read_namespaced_secret(name, self.namespace)
                    data = {k: base64.b64decode(v).decode() for k, v in (obj.data or {}).items()}
                else:
                    obj = self.core.read_namespaced_config_map(name, self.namespace)
                    data = dict(obj.data or {})
            except ApiException as exc:
                if exc.status != 404:
                    raise
                data = None
            self._cache[key] = data
        return self._cache[key]

    def _key_ref(self, kind: str, ref: dict[str, Any]) -> str | None:
        data = self._data(kind, ref["name"])
        optional = bool(ref.get("optional"))
        if data is None:
            if optional:
                return None
            raise ConfigError(f'{kind} "{ref["name"]}" not found')
        if ref["key"] not in data:
            if optional:
                return None
            raise ConfigError(f"couldn't find key {ref['key']} in {kind} "
                              f"{self.namespace}/{ref['name']}")
        return data[ref["key"]]

    def _field(self, path: str) -> str:
        meta, spec, status = self.pod["metadata"], self.pod["spec"], self.pod.get("status", {})
        simple = {
            "metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
            "metadata.uid": meta.get("uid"), "spec.nodeName": spec.get("nodeName"),
            "spec.serviceAccountName": spec.get("serviceAccountName"),
            "status.podIP": status.get("podIP"), "status.hostIP": status.get("hostIP"),
            "status.podIPs": ",".join(ip["ip"] for ip in status.get("podIPs", [])),
        }
        if path in simple:
            return simple[path] or ""
        m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
        if m:
            return (meta.get(m.group(1)) or {}).get(m.group(2), "")
        raise ConfigError(f"unsupported fieldRef {path}")

    def resolve(self, container: dict[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.get("envFrom", []) or []:
            prefix = source.get("prefix", "")
            for kind, key in (("secret", "secretRef"), ("configmap", "configMapRef")):
                if key in source:
                    data = self._data(kind, source[key]["name"])
                    if data is None and not source[key].get("optional"):
                        raise ConfigError(f'{kind} "{source[key]["name"]}" not found')
                    env.update({prefix + k: v for k, v in (data or {}).items()})
        for var in container.get("env", []) or []:
            name, vf = var["name"], var.get("valueFrom")
            if vf is None:
                env[name] = expand(var.get("value", ""), env)
                continue
            value: str | None
            if "secretKeyRef" in vf:
                value = self._key_ref("secret", vf["secretKeyRef"])
            elif "configMapKeyRef" in vf:
                value = self._key_ref("configmap", vf["configMapKeyRef"])
            elif "fieldRef" in vf:
                value = self._field(vf["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in vf:
                value = _resource_field(container, vf["resourceFieldRef"])
            else:
                raise ConfigError(f"unsupported valueFrom for {name}")
            if value is not None:
                env[name] = value
        return env


def _resource_field(container: dict[str, Any], ref: dict[str, Any]) -> str:
    kind, _, resource = ref["resource"].partition(".")
    value = ((container.get("resources") or {}).get(kind) or {}).get(resource)
    return str(value) if value is not None else "0"
