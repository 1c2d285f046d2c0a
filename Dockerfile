# ollacord: a slim, non-root image. Configuration comes from the environment (env_file: .env);
# no secrets are baked in (see .dockerignore).
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HISTORY_STORE=sqlite:////data/history.db

WORKDIR /app

# Dependencies get their own layer: it is rebuilt only when pyproject.toml changes.
COPY pyproject.toml README.md ./
RUN mkdir bot && touch bot/__init__.py \
    && pip install . \
    && pip uninstall --yes ollacord \
    && rm -rf bot

COPY bot ./bot
RUN pip install --no-deps . \
    && useradd --create-home --uid 10001 ollacord \
    && mkdir -p /data \
    && chown ollacord:ollacord /data

USER ollacord
VOLUME ["/data"]
ENTRYPOINT ["python", "-m", "bot"]
