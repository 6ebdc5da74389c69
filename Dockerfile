# One image for every role (api, workers, beat, flower, migrate); docker-compose.yml picks
# the command. Defaults to the API.
FROM python:3.11-slim

# PYTHONPATH=/app: import the code from /app, next to alembic.ini and migrations/.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app

WORKDIR /app
COPY . .
RUN pip install . \
    && rm -rf build *.egg-info \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin app \
    && mkdir -p /app/var \
    && chown app:app /app/var

USER app
EXPOSE 5000 5555

# gunicorn.conf.py: the buffering gthread worker, timeouts and request limits.
CMD ["gunicorn", "-c", "gunicorn.conf.py", "--bind", "0.0.0.0:5000", "api.app:create_app()"]
