# syntax=docker/dockerfile:1
# siesta's container image: `docker build -t registry.example.com/siesta:0.1.0 .`
#
# Two stages: the builder installs siesta and its hash-pinned dependencies into a venv
# (wheels only, so no compiler is needed); the final stage copies that venv onto a clean
# slim base and runs as an unprivileged user. The lock files come from deploy/lock.sh.
# Pin the base by digest for reproducible builds: python:3.11-slim-bookworm@sha256:...

FROM python:3.11-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# Dependencies first: this layer is reused until a lock file changes.
COPY deploy/requirements.txt deploy/build-requirements.txt deploy/
RUN python -m venv /opt/build \
 && /opt/build/bin/pip install --require-hashes --only-binary=:all: \
      -r deploy/build-requirements.txt \
 && python -m venv /opt/siesta \
 && /opt/siesta/bin/pip install --require-hashes --only-binary=:all: \
      -r deploy/requirements.txt

# siesta itself: built into a wheel with the pinned hatchling, installed without
# resolving anything (every dependency is already there, hash-checked).
COPY pyproject.toml README.md hatch_build.py ./
COPY scripts/compile.py scripts/
COPY src/ src/
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && /opt/siesta/bin/pip install --no-deps --no-index /wheels/siesta_gateway-*.whl \
 && /opt/siesta/bin/pip uninstall --yes pip \
 && /opt/siesta/bin/siesta --help > /dev/null


FROM python:3.11-slim-bookworm

# The uid/gid the Kubernetes manifests run as (runAsUser: 10001).
RUN groupadd --system --gid 10001 siesta \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /var/lib/siesta --shell /usr/sbin/nologin siesta \
 && mkdir -p /etc/siesta /var/lib/siesta \
 && chown 10001:10001 /var/lib/siesta

COPY --from=builder /opt/siesta /opt/siesta

ENV PATH=/opt/siesta/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/siesta

USER 10001:10001
WORKDIR /var/lib/siesta

# gateway, admin API + /metrics, KEDA External Scaler (gRPC)
EXPOSE 8080 8081 9090

ENTRYPOINT ["siesta"]
CMD ["up", "-c", "/etc/siesta/siesta.yaml"]
