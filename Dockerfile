# One image for the API, the workers and the card-network simulator (see docker-compose.temporal.yml).
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The locked runtime dependencies first (their own layer), each file checked against its hash.
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY api ./api
COPY activities ./activities
COPY cardnet ./cardnet
COPY cli ./cli
COPY client ./client
COPY core ./core
COPY workers ./workers
COPY workflows ./workflows
RUN pip install --no-cache-dir --no-deps .
# The state dir is private to its user (the processes refuse one that others can reach).
RUN useradd --system --uid 10001 durapay && mkdir -p /data && chown durapay /data \
    && chmod 700 /data
USER durapay
ENV DURAPAY_HOME=/data
