# ollacord: a slim image that runs as a non-root user. All configuration comes from the
# environment (compose: env_file: .env); no secret is baked in (see .dockerignore).
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HISTORY_STORE=sqlite:////data/history.db \
    HEALTH_PORT=8080

WORKDIR /app

# Dependencies get their own layer, rebuilt only when pyproject.toml changes: install the
# project's requirements with a placeholder package, then drop the placeholder.
COPY pyproject.toml README.md ./
RUN mkdir bot \
    && touch bot/__init__.py \
    && pip install . \
    && pip uninstall --yes ollacord \
    && rm -rf bot

COPY bot ./bot
RUN pip install --no-deps . \
    && groupadd --gid 10001 ollacord \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin ollacord \
    && mkdir -p /data \
    && chown 10001:10001 /data

USER 10001:10001
VOLUME ["/data"]
EXPOSE 8080

# /healthz is 200 while the Discord gateway is connected and the history store answers.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('HEALTH_PORT', '8080'), timeout=4)"]

# Exec form: python is PID 1 and receives SIGTERM itself; the bot finishes or interrupts
# replies in flight within SHUTDOWN_GRACE (8 s), inside Docker's 10 s stop timeout.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "bot"]
