"""The instance storage of ``deploy/postgres/dagster.yaml``: dagster-postgres's, taking the URL as Dagster's docs
write it.

A URL without a driver (``postgresql://...``, or ``postgres://...``) is read by SQLAlchemy 2.1 as psycopg 3,
which is not installed: dagster-postgres ships psycopg2. Such a URL is given the psycopg2 driver here, in every
process that loads the instance (webserver, daemon, ``update``, run workers); a URL naming a driver is kept.

Not under ``defs/``: ``dg`` imports every module there, and this one needs the optional ``scale`` extra. It
imports nothing else of the package, so loading the instance stays cheap."""

import re

from dagster_postgres import DagsterPostgresStorage

_NO_DRIVER = re.compile(r"^postgres(?:ql)?://")


def psycopg2_url(url: str) -> str:
    """``url`` with the psycopg2 driver when it names none."""
    return _NO_DRIVER.sub("postgresql+psycopg2://", url, count=1)


class PostgresStorage(DagsterPostgresStorage):
    """``DagsterPostgresStorage`` with :func:`psycopg2_url` applied to its ``postgres_url``."""

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        if config_value.get("postgres_url"):
            config_value = {**config_value, "postgres_url": psycopg2_url(config_value["postgres_url"])}
        return super().from_config_value(inst_data, config_value)
