# llm-incident: the alert intake service (`llm-incident serve`).
#
#   docker build -t llm-incident .
#   docker run -p 8080:8080 -v llm-incident-data:/data \
#     -e LLM_INCIDENT_WEBHOOK_TOKEN=... llm-incident
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# .dockerignore keeps tests, benches, VCS data and local databases out. The shipped
# playbooks are data, not a Python package: they stay in /app/playbooks.
COPY . .
RUN pip install . && rm -rf build

RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin llm-incident \
    && mkdir -p /data \
    && chown llm-incident /data
USER llm-incident

ENV LLM_INCIDENT_DB=/data/llm-incident.db \
    LLM_INCIDENT_POLICY=/data/serving-policy.yaml \
    LLM_INCIDENT_PLAYBOOKS=/app/playbooks \
    LLM_INCIDENT_PORT=8080
VOLUME ["/data"]
EXPOSE 8080

# slim has no curl: probe with the interpreter the image already has.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('LLM_INCIDENT_PORT', '8080'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status == 200 else 1)"]

# SIGTERM (docker stop) drains requests in flight, stops the scheduler, closes the store.
STOPSIGNAL SIGTERM
ENTRYPOINT ["llm-incident", "serve", "--host", "0.0.0.0"]
