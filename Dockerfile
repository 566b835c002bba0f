# syntax=docker/dockerfile:1
# The server image: `docker build -t napalm-server .`
#   serve:    docker run napalm-server                 (python -m server serve, PID 1, gets SIGTERM -> drain)
#   migrate:  docker run napalm-server migrate         (one-shot, before a rollout)
#   backup:   docker run napalm-server backup --out /backups/napalm.dump
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM node:20-bookworm-slim AS frontend
WORKDIR /src
COPY frontend-stub/package.json frontend-stub/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml ./
# Runtime dependencies only (no dev/bots extras), straight from pyproject.toml.
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml','rb'))['project']['dependencies']))" \
        > requirements.txt \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install -r requirements.txt

FROM ${PYTHON_IMAGE}
# pg_dump / pg_restore (Debian 12: client 15, the server's major version) for `backup` / `restore`.
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /app --shell /usr/sbin/nologin napalm
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --chown=root:root server ./server
COPY --chown=root:root schema ./schema
COPY --chown=root:root frontend-stub/index.html frontend-stub/*.js frontend-stub/*.css ./frontend-stub/
COPY --from=frontend --chown=root:root /src/node_modules/socket.io-client/dist/socket.io.min.js \
    ./frontend-stub/node_modules/socket.io-client/dist/socket.io.min.js
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=8080 \
    METRICS_HOST=0.0.0.0 \
    METRICS_PORT=9100 \
    LOG_FORMAT=json
USER 10001:10001
EXPOSE 8080 9100
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=2)"]
# Exec form: python is PID 1 and receives SIGTERM itself (it installs its own handler: drain, then exit).
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "server"]
CMD ["serve"]
