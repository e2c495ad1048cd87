# pscsync: one image for web, worker, beat, migrate and the demo (docs/operations.md, "Containers").
# Written for `docker build .` / `podman build .`; not built on the machine it was written on
# (no container runtime there): see the README for what was and was not run.

# --- build: a virtualenv with the pinned requirements (every one ships a wheel: no compiler) ---
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install --only-binary=:all: -r /tmp/requirements.txt

# --- runtime: slim, no compilers, not root --------------------------------------------------
FROM python:3.11-slim
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
