# Fig with its embedded PostgreSQL: `docker build -t fig .`, then either
#   docker run -p 5433:5433 -e FIG__AUTH__METHOD=scram-sha-256 \
#              -e FIG__AUTH__SUPERUSER_PASSWORD=... fig      (log in as postgres with it)
# or, on a network you trust, `docker run -p 5433:5433 -e FIG__AUTH__TRUST_REMOTE=true fig`.
# With neither, Fig refuses to start: it listens on 0.0.0.0, and trust there would hand every
# client who reaches the port the superuser role.
# The dashboard's chart library (keep the version in step with the Makefile's UPLOT_VERSION).
FROM node:20-bookworm-slim AS chart
WORKDIR /chart
RUN npm pack --silent uplot@1.6.32 && tar -xzf uplot-1.6.32.tgz

FROM python:3.11-slim-bookworm

RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 postgresql-client-15 \
    && rm -rf /var/lib/apt/lists/*
ENV PATH="/usr/lib/postgresql/15/bin:${PATH}"

WORKDIR /opt/fig
COPY pyproject.toml README.md ./
COPY fig_server ./fig_server
COPY --from=chart /chart/package/dist/uPlot.iife.min.js /chart/package/dist/uPlot.min.css \
     /chart/package/LICENSE ./fig_server/dashboard/page/vendor/
COPY conf ./conf
RUN pip install --no-cache-dir .

# The dashboard and /metrics (port 9433) stay on the container's loopback unless
# FIG__METRICS__HOST=0.0.0.0 and FIG__METRICS__REMOTE=true are set: they show statement texts.
ENV FIG__SERVER__HOST=0.0.0.0 \
    FIG__SERVER__DATA_DIR=/var/lib/fig
VOLUME /var/lib/fig
EXPOSE 5433
CMD ["fig", "serve", "--config", "/opt/fig/conf/fig.toml"]
