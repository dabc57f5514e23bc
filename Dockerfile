# The Ringmaster image: `ringmaster serve` and `ringmaster controller`, which deploy/ runs from it.
# No image is published yet; docs/deploy.md says how to build and push one.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY cohorts cohorts
COPY rollout rollout
COPY migrations migrations
COPY flagd-provider flagd-provider
# The provider is a distribution of this repository that `ringmaster` depends on: install it first.
RUN pip install ./flagd-provider . && rm -rf /src \
    && useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin ringmaster

# Runs as this user with a read-only root filesystem; local state, if any, goes to /tmp (an emptyDir in deploy/).
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["ringmaster"]
