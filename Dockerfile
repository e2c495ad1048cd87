# pscsync: one image for web, worker, beat, migrate and the demo (docs/operations.md, "Containers").
# `docker build .` / `podman build .` on the official Python image. Built and run on a machine
# without registry access by ops/containers/check.sh, with PYTHON_IMAGE set to a local stand-in
# made from Debian bookworm (ops/containers/README.md says what that does and does not prove).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a virtualenv with the pinned requirements (every one ships a wheel: no compiler) ---
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install --only-binary=:all: -r /tmp/requirements.txt

# --- runtime: slim, no compilers, not root --------------------------------------------------
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DJANGO_SETTINGS_MODULE=pscsync.settings \
    PSCSYNC_VAR_DIR=/app/var \
    PROMETHEUS_MULTIPROC_DIR=/metrics
RUN groupadd --system --gid 10001 pscsync \
    && useradd --system --uid 10001 --gid pscsync --home-dir /app --shell /usr/sbin/nologin pscsync
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY . /app
# Static files are collected into the image (whitenoise serves them); throwaway keys, build only.
RUN mkdir -p /app/var /metrics \
    && SECRET_KEY=collectstatic-only-not-a-secret PSCSYNC_CREDENTIALS_KEYS=build:YnVpbGQtb25seS1ub3QtYS1rZXktMDAwMDAwMDAwMDA= \
       python manage.py collectstatic --noinput -v 0 \
    && chown -R pscsync:pscsync /app/var /metrics
USER 10001:10001
EXPOSE 8000
# Liveness only: readiness (/readyz) is the orchestrator's business (compose.yaml).
HEALTHCHECK --interval=15s --timeout=3s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["gunicorn", "pscsync.wsgi", "-b", "0.0.0.0:8000", "-w", "2", "--threads", "4", "--graceful-timeout", "20"]
