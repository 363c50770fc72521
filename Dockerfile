# llm-incident: the alert intake service (`llm-incident serve`), its drills and demo.
#
#   docker build -t llm-incident .
#   docker run -d -p 8080:8080 -v llm-incident-data:/data \
#     -e LLM_INCIDENT_WEBHOOK_TOKEN=... llm-incident
#
# It listens on 0.0.0.0, so `serve` refuses to start without LLM_INCIDENT_WEBHOOK_TOKEN
# (anyone's alert could run automatic steps) unless
# LLM_INCIDENT_ALLOW_UNAUTHENTICATED_WEBHOOKS=1 says so; the log then warns at start.
#
# BASE is any image with Python 3.11+ and its venv module (the default, or Debian's
# python3 + python3-venv). A `wheelhouse/` directory in the build context (from
# `pip wheel . -w wheelhouse`) is installed offline instead of reaching PyPI.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY . /src
RUN python3 -m venv /venv \
    && if [ -d /src/wheelhouse ]; then \
         /venv/bin/pip install --no-index --find-links /src/wheelhouse llm-incident; \
       else \
         /venv/bin/pip install /src; \
       fi \
    && /venv/bin/llm-incident --version

FROM ${BASE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/venv/bin:$PATH
# Only the virtual environment: the playbooks, rules pack, drill scenarios and
# templates are inside the installed package, found from any folder.
COPY --from=build /venv /venv

RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin llm-incident \
    && mkdir -p /data \
    && chown llm-incident /data
USER llm-incident
WORKDIR /data

ENV LLM_INCIDENT_DB=/data/llm-incident.db \
    LLM_INCIDENT_POLICY=/data/serving-policy.yaml \
    LLM_INCIDENT_PORT=8080
VOLUME ["/data"]
EXPOSE 8080

# Probed with the interpreter the image already has (slim images have no curl).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import os, sys, urllib.request; port = os.environ.get('LLM_INCIDENT_PORT', '8080'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/readyz', timeout=4).status == 200 else 1)"]

# SIGTERM (docker stop) drains requests in flight, stops the scheduler, closes the store.
STOPSIGNAL SIGTERM
ENTRYPOINT ["llm-incident", "serve", "--host", "0.0.0.0"]
