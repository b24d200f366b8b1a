# secrets-bridge: one small process keeping /run/secrets in step with external vaults.
# The Python the tests run on, so the pinned dependencies below are the tested ones.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
# Exact pins of every run-time dependency (deploy/lock_requirements.py), then the project itself.
COPY deploy/requirements.txt ./
RUN pip install --no-cache-dir --prefix=/install --requirement requirements.txt
COPY pyproject.toml README.md ./
COPY bridge ./bridge
COPY providers ./providers
RUN pip install --no-cache-dir --no-deps --prefix=/install .

FROM python:3.11-slim-bookworm
COPY --from=build /install /usr/local
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
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
VOLUME ["/run/secrets"]
EXPOSE 9098
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:9098/readyz', timeout=2)"]
ENTRYPOINT ["secrets-bridge"]
CMD ["run"]
