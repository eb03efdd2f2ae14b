# The sidecar image: `docker build -t extproc-budgets .`
# `docker run extproc-budgets` serves the embedded default (the examples, spend in memory);
# a deployment passes `--config /etc/extproc/config` (a mounted ConfigMap) or `--source kubernetes`.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY extproc ./extproc
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --no-create-home extproc
COPY --from=build /install /usr/local
COPY examples /etc/extproc/examples
USER 10001
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    EXTPROC_CONFIG=/etc/extproc/examples \
    EXTPROC_GRPC_ADDRESS=0.0.0.0:50051 \
    EXTPROC_ADMIN_ADDRESS=0.0.0.0:9090
EXPOSE 50051 9090
HEALTHCHECK --interval=10s --timeout=2s CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=1).status != 200)"]
ENTRYPOINT ["extproc", "serve"]
