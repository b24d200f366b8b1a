# secrets-bridge: one small process keeping /run/secrets in step with external vaults.
# BASE: the Python the tests run on, so the pinned dependencies below are the tested ones. Any Debian
# bookworm with python3 and its venv module serves (scripts/build-image.sh makes one from Debian's
# packages where no registry is reachable).
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE} AS build
# The host's CA bundle when the build's network needs it (scripts/build-image.sh); unset otherwise.
ARG PIP_CERT
WORKDIR /src
RUN python3 -m venv /opt/secrets-bridge
# Exact pins of every run-time dependency (deploy/lock_requirements.py), then the project itself.
COPY deploy/requirements.txt ./
RUN /opt/secrets-bridge/bin/pip install --no-cache-dir --requirement requirements.txt
COPY pyproject.toml README.md ./
COPY bridge ./bridge
COPY providers ./providers
RUN /opt/secrets-bridge/bin/pip install --no-cache-dir --no-deps . \
    && /opt/secrets-bridge/bin/pip uninstall --yes pip setuptools

FROM ${BASE}
COPY --from=build /opt/secrets-bridge /opt/secrets-bridge
# Runs as an unprivileged user. Setting a uid/gid other than its own on files needs CAP_CHOWN;
# in Kubernetes, fsGroup gives the application read access instead (docs/kubernetes.md).
# /run/secrets belongs to it too, so a volume Docker fills from the image is writable.
RUN groupadd --system --gid 10001 bridge \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin bridge \
    && install -d -o 10001 -g 10001 -m 0755 /run/secrets
USER 10001:10001
# The config is read from ./secrets-bridge.yaml by default: mount it at
# /etc/secrets-bridge/secrets-bridge.yaml, or name another file with --config.
WORKDIR /etc/secrets-bridge
ENV PATH=/opt/secrets-bridge/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
VOLUME ["/run/secrets"]
EXPOSE 9098
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:9098/readyz', timeout=2)"]
ENTRYPOINT ["secrets-bridge"]
CMD ["run"]
