# The collector's image, as docker-compose.yml builds it: the package with its pinned dependencies.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY collector ./collector
RUN pip install --no-cache-dir --disable-pip-version-check -c constraints.txt . \
    && rm -rf /root/.cache
# Inside a container the collector must listen beyond its loopback to be reached.
ENV PW_HOST=0.0.0.0 PW_PORT=8080
EXPOSE 8080
USER nobody
ENTRYPOINT ["precondition-watch"]
CMD ["serve"]
