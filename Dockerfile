# porch in a container: the bundled site (config/examples/container.yaml) on port 8000.
#   docker build -t porch . && docker run --rm -p 8000:8000 porch
# Serve your own files and config instead by mounting them and naming the config:
#   docker run --rm -p 8000:8000 -v "$PWD/site:/srv/site:ro" porch -c /srv/site/porch.yaml
FROM python:3.13-slim

# An unprivileged user: porch never runs as root inside the image.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin porch

COPY . /tmp/porch-source
RUN pip install --no-cache-dir /tmp/porch-source \
    && mkdir -p /srv/porch \
    && cp -r /tmp/porch-source/config /tmp/porch-source/www /tmp/porch-source/cgi-bin /tmp/porch-source/apps /srv/porch/ \
    && rm -rf /tmp/porch-source

WORKDIR /srv/porch
USER porch
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"
ENTRYPOINT ["porch"]
CMD ["-c", "config/examples/container.yaml"]
