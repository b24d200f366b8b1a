# secrets-bridge: one small process keeping /run/secrets in step with external vaults.
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bridge ./bridge
COPY providers ./providers
# hadolint ignore=DL3013  # installs this source tree, whose dependencies carry lower bounds
RUN pip install --no-cache-dir --prefix=/install ".[all]"

FROM python:3.12-slim
COPY --from=build /install /usr/local
# Runs as an unprivileged user by default. Setting uid/gid on files needs CAP_CHOWN (or root).
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin bridge
USER 10001
# hadolint ignore=DL3064  # a file path, not a secret
ENV SECRETS_BRIDGE_CONFIG=/etc/secrets-bridge/config.yaml \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
VOLUME ["/run/secrets"]
EXPOSE 9098
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:9098/readyz', timeout=2)"]
ENTRYPOINT ["secrets-bridge"]
CMD ["run"]
