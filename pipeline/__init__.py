"""tokenmill data processing: storage, schema, readers, steps, dedup, datasets. No Prefect here."""

__version__ = "0.1.0"
