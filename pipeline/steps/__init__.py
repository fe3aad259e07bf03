"""Per-document steps over Arrow tables: each adds columns and/or drops rows with a reason."""
