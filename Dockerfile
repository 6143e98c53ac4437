# syntax=docker/dockerfile:1
# One image definition, three final targets: `backend`, `gateway` and the example `files`
# service. The wheel is built in a throw-away stage so no compiler, no dev extra and no source
# tree reach the final images.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY libs ./libs
COPY gateway ./gateway
COPY backend ./backend
COPY tokengate ./tokengate
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TOKENGATE_MIGRATIONS_DIR=/app/db
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin tokengate
COPY db /app/db
COPY scripts/compose-certs /app/compose-certs
# mount points of compose's certificate volumes: a new volume takes this owner and mode
RUN mkdir -p /tls/ca /tls/backend /tls/gateway \
    && chown 10001 /tls/ca /tls/backend /tls/gateway && chmod 0700 /tls/ca /tls/backend /tls/gateway
WORKDIR /app
USER 10001

FROM runtime AS backend
EXPOSE 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8001/healthz', timeout=2)"]
CMD ["tokengate", "backend", "--host", "0.0.0.0", "--port", "8001"]

FROM runtime AS gateway
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["tokengate", "gateway", "--host", "0.0.0.0", "--port", "8000"]

# The example service behind the gateway (examples/files/): the runtime plus FastAPI and the
# example's source; it holds the gateway's public key only (compose.yaml).
FROM runtime AS files
USER root
RUN pip install --no-cache-dir "fastapi>=0.115,<1"
COPY examples /app/examples
USER 10001
EXPOSE 8002
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8002/healthz', timeout=2)"]
CMD ["python", "-m", "examples.files", "--host", "0.0.0.0", "--port", "8002"]
