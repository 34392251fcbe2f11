# One image for the operator and the gateway: the operator's Deployment runs `switchboard-operator`,
# gateway Deployments run `switchboard-gateway`. For people with Docker; `make image` builds the
# same image without Docker (hack/build-image.sh), and tests/image/test_image.py checks both agree.
# Base pinned by exact version; pin it by digest as well in your registry mirror.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
RUN python -m venv /opt/switchboard
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY gateway/ gateway/
COPY contract/ contract/
RUN /opt/switchboard/bin/pip install --no-cache-dir --no-compile . \
 && /opt/switchboard/bin/python -m compileall -q /opt/switchboard/lib

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.source="https://github.com/switchboard-dev/switchboard" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/switchboard /opt/switchboard
ENV PATH=/opt/switchboard/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# 65532 is the conventional "nonroot" uid; the pods' restricted securityContext matches it. It
# gets a passwd entry, although the operator does not depend on one (the pods may run any uid).
RUN groupadd --gid 65532 switchboard \
 && useradd --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin switchboard
USER 65532:65532
CMD ["switchboard-operator", "--all-namespaces"]
